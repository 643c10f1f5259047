"""Traffic capture of a simulated run, re-verified by an independent COSE implementation (pycose).

- The read-only ``_observer`` broker user: reads everything, can publish nothing, and configs generated
  without it are exactly the production ones.
- A short chain with a capture attached: the file holds the header and the traffic of both brokers, and
  tests/xcheck_capture.py (pycose, its own venv, nothing imported from countersign) verifies every
  message with only the header's keys; a flipped byte is reported as a failure.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest
from conftest import GATEWAY_PASSWORD, make_keystore

from countersign.common.mqtt import Handlers, Message, Options, make_client
from countersign.gateway.brokerconf import OBSERVER_USER, write_broker_files
from countersign.protocol import topics
from countersign.protocol.keystore import Keystore, mqtt_password
from countersign.province.brokerconf import write_province_broker_files
from countersign.sim.broker import Mosquitto, free_port, run_as_clause
from countersign.sim.capture import (
    Capture,
    CaptureError,
    enable_observer,
    header_for,
    start_captured,
)
from countersign.sim.chain import Chain, ChainConfig

ROOT = Path(__file__).resolve().parent.parent
XPY = ROOT / ".venv-xcheck" / "bin" / "python"
XCHECK = ROOT / "tests" / "xcheck_capture.py"
OBSERVER_PASSWORD = "test-observer-password"
PROVINCE_PASSWORD = "test-province-password"


# -- a small MQTT client that records what it receives ---------------------------------------------------
@dataclass
class Client:
    port: int
    username: str
    password: str
    filters: list[str]
    got: list[tuple[str, bytes]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    v5: bool = False             # MQTT 5: a refused publish gets a PUBACK with a reason, not a disconnect
    subscribed: int = 0          # SUBACKs with every filter granted
    disconnects: int = 0
    pubacks: dict[int, Any] = field(default_factory=dict)     # mid -> PUBACK reason code

    def start(self, timeout: float = 10.0) -> Client:
        # paho's own reconnect backoff; on_publish raw, for the PUBACK's reason code.
        self.c = make_client(
            Options(client_id=self.username, username=self.username, password=self.password, mqtt5=self.v5,
                    reconnect_min_s=1, reconnect_max_s=120, jitter=False),
            Handlers(connected=self._on_connect, subscribed=self._on_subscribe, message=self._on_message,
                     disconnected=self._on_disconnect, extra={"on_publish": self._on_publish}))
        self.c.connect("127.0.0.1", self.port)
        self.c.loop_start()
        if self.filters and not self.wait(lambda: self.subscribed > 0, timeout):
            raise RuntimeError(f"{self.username}: no subscription to {self.filters}")
        return self

    def _on_connect(self, _session_present: bool) -> None:
        if self.filters:
            self.c.subscribe([(f, 1) for f in self.filters])

    def _on_subscribe(self, ok: bool, _reasons: list[str]) -> None:
        with self.cond:
            self.subscribed += ok
            self.cond.notify_all()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self.cond:
            self.pubacks[mid] = rc
            self.cond.notify_all()

    def _on_message(self, msg: Message) -> None:
        with self.cond:
            self.got.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def _on_disconnect(self, _reason: str | None) -> None:
        with self.cond:
            self.disconnects += 1
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> Any:
        """Publish; at QoS1 return the PUBACK's reason code (None if the broker cut the connection)."""
        info = self.c.publish(topic, payload, qos=qos)
        if qos == 0:
            return None
        if not self.wait(lambda: info.mid in self.pubacks or self.disconnects > 0, 5):
            raise RuntimeError(f"{self.username}: no PUBACK for {topic}")
        return self.pubacks.get(info.mid)

    def stop(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _acl_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]


def _users(passwd: Path) -> list[str]:
    return [ln.split(":", 1)[0] for ln in passwd.read_text().splitlines() if ln]


HALL_ACL = ["user _gateway", "topic read cs/1/d/+/up", "topic read cs/1/d/+/will",
            "topic write cs/1/d/+/down", "pattern write cs/1/d/%u/up", "pattern write cs/1/d/%u/will",
            "pattern read cs/1/d/%u/down"]
OBSERVER_ACL = ["user _observer", "topic read cs/1/#", "topic deny cs/1/+/_observer/#"]


def _registry() -> Keystore:
    reg = make_keystore()
    reg.halls["hf01"] = bytes(32)
    return reg


# -- the observer user ----------------------------------------------------------------------------------
def test_configs_without_observer_are_the_production_ones(tmp_path: Path) -> None:
    ks = make_keystore(devices=2)
    plain = write_broker_files(tmp_path / "plain", ks, GATEWAY_PASSWORD, port=1883)
    none = write_broker_files(tmp_path / "none", ks, GATEWAY_PASSWORD, port=1883, observer_password=None)
    obs = write_broker_files(tmp_path / "obs", ks, GATEWAY_PASSWORD, port=1883,
                             observer_password=OBSERVER_PASSWORD)
    # The default is the ACL of PROTOCOL.md section 3, nothing more; the observer adds only its block.
    assert _acl_lines(plain.acl) == _acl_lines(none.acl) == HALL_ACL
    assert _acl_lines(obs.acl) == HALL_ACL[:4] + OBSERVER_ACL + HALL_ACL[4:]
    assert _users(plain.passwd) == _users(none.passwd) == ["_gateway", "hf01-w01", "hf01-w02"]
    assert _users(obs.passwd) == ["_gateway", OBSERVER_USER, "hf01-w01", "hf01-w02"]
    for f in (plain, none, obs):   # the conf itself does not depend on the observer
        assert f.conf.read_text().replace(str(f.conf.parent), "D") == \
            plain.conf.read_text().replace(str(plain.conf.parent), "D")

    reg = _registry()
    pplain = write_province_broker_files(tmp_path / "pplain", reg, {"hf01": "x"}, PROVINCE_PASSWORD, port=1,
                                         workers=2)
    pobs = write_province_broker_files(tmp_path / "pobs", reg, {"hf01": "x"}, PROVINCE_PASSWORD, port=1,
                                       workers=2, observer_password=OBSERVER_PASSWORD)
    worker = ["topic read cs/1/h/+/batch", "topic write cs/1/h/+/ack"]
    patterns = ["pattern write cs/1/h/%u/batch", "pattern read cs/1/h/%u/ack"]
    assert _acl_lines(pplain.acl) == ["user province-1", *worker, "user province-2", *worker, *patterns]
    assert _acl_lines(pobs.acl) == ["user province-1", *worker, "user province-2", *worker, *OBSERVER_ACL,
                                    *patterns]
    assert _users(pplain.passwd) == ["province-1", "province-2", "hf01"]
    assert _users(pobs.passwd) == ["province-1", "province-2", OBSERVER_USER, "hf01"]


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[dict[str, Mosquitto]]:
    """A hall broker and a provincial broker, both generated with the observer user."""
    started: dict[str, Mosquitto] = {}
    ports = {"hall": free_port(), "province": free_port()}
    hall = write_broker_files(tmp_path / "hall", make_keystore(devices=2), GATEWAY_PASSWORD,
                              port=ports["hall"], bind="127.0.0.1", run_as=run_as_clause(),
                              observer_password=OBSERVER_PASSWORD)
    prov = write_province_broker_files(tmp_path / "prov", _registry(), {"hf01": "pw-hf01"}, PROVINCE_PASSWORD,
                                       port=ports["province"], bind="127.0.0.1", run_as=run_as_clause(),
                                       workers=1, observer_password=OBSERVER_PASSWORD)
    try:
        for name, conf in (("hall", hall.conf), ("province", prov.conf)):
            started[name] = Mosquitto(conf, ports[name]).start()
        yield started
    finally:
        for b in started.values():
            b.stop()


A = "hf01-w01"
# Every topic the observer might try: its own pattern topics (which mosquitto's `pattern` lines would
# otherwise grant it), other clients' topics, both brokers' kinds.
FORBIDDEN = [topics.device_up(A), topics.device_down(A), topics.device_will(A), "cs/1/d/_observer/up",
             "cs/1/d/_observer/will", "cs/1/d/_observer/down", topics.hall_batch("hf01"),
             topics.hall_ack("hf01"), "cs/1/h/_observer/batch", "cs/1/h/_observer/ack", "cs/1/x", "other"]


@pytest.mark.parametrize("which", ["hall", "province"])
def test_observer_reads_everything_and_publishes_nothing(brokers: dict[str, Mosquitto], which: str,
                                                         tmp_path: Path) -> None:
    port = brokers[which].port
    if which == "hall":
        # the real readers: the gateway (uplink and wills) and the device (its downlink)
        readers = [Client(port, topics.GATEWAY_USER, GATEWAY_PASSWORD, [topics.DEVICE_UP_FILTER,
                                                                         topics.DEVICE_WILL_FILTER]),
                   Client(port, A, mqtt_password(make_keystore().devices[A].key), [topics.device_down(A)])]
        sentinels = [(readers[1], topics.device_up(A)), (readers[0], topics.device_down(A))]
    else:
        readers = [Client(port, "province-1", PROVINCE_PASSWORD, [topics.PROVINCE_SHARED_FILTER]),
                   Client(port, "hf01", "pw-hf01", [topics.hall_ack("hf01")])]
        sentinels = [(readers[1], topics.hall_batch("hf01")), (readers[0], topics.hall_ack("hf01"))]
    started: list[Client] = []
    try:
        for c in readers:
            started.append(c.start())
        for t in FORBIDDEN:
            # mosquitto 2.0.11 cuts a client after a refused publish (MQTT 5: after a "not authorized"
            # PUBACK), so a connection per topic. QoS0 first: the QoS1 PUBACK, or the cut, shows the
            # broker has dealt with both (one connection's packets are handled in order).
            observer = Client(port, OBSERVER_USER, OBSERVER_PASSWORD, [], v5=True)
            started.append(observer.start())
            observer.publish(t, b"forged by the observer (qos0)", qos=0)
            rc = observer.publish(t, b"forged by the observer")
            assert rc is None or str(rc) == "Not authorized", (t, rc)
        # Sentinels from the legitimate publishers, routed after every forbidden publish, with the
        # capture (the observer, reading) attached.
        with Capture(tmp_path / "cap.jsonl", {"capture": 1}) as cap:
            cap.attach(which, "127.0.0.1", port, OBSERVER_PASSWORD)
            for publisher, t in sentinels:
                publisher.publish(t, b"sentinel")
            assert readers[0].wait(lambda: readers[0].got != [])
            assert readers[1].wait(lambda: readers[1].got != [])
            assert cap.wait_for(lambda c: sum(c.counts().values()) >= 2, 10)
        assert readers[0].got == [(sentinels[0][1], b"sentinel")]
        assert readers[1].got == [(sentinels[1][1], b"sentinel")]
        # The observer reads both directions: one JSON line each after the header.
        lines = [json.loads(ln) for ln in (tmp_path / "cap.jsonl").read_text().splitlines()]
        assert lines[0] == {"capture": 1}
        assert sorted((m["broker"], m["direction"], m["topic"], m["payload_hex"]) for m in lines[1:]) == \
            sorted((which, t.rsplit("/", 1)[1], t, b"sentinel".hex()) for _, t in sentinels)
        assert all(isinstance(m["t"], float) and abs(m["t"] - time.time()) < 60 for m in lines[1:])
    finally:
        for c in started:
            c.stop()


def test_capture_keeps_what_arrives_while_it_reconnects(brokers: dict[str, Mosquitto],
                                                        tmp_path: Path) -> None:
    """A broker restart (fault tests do that): what a keypad sends before the capture is back is kept."""
    hall = brokers["hall"]
    with Capture(tmp_path / "cap.jsonl", {"capture": 1}) as cap:
        cap.attach("hall:hf01", "127.0.0.1", hall.port, OBSERVER_PASSWORD)
        hall.stop()
        hall.start()
        # The device connects at once; the capture reconnects only after its 1 s back-off.
        dev = Client(hall.port, A, mqtt_password(make_keystore().devices[A].key), []).start()
        try:
            dev.publish(topics.device_up(A), b"right after the restart")
        finally:
            dev.stop()
        assert cap.wait_for(lambda c: c.counts().get(("hall:hf01", "up"), 0) >= 1, 15)
    assert [json.loads(ln)["payload_hex"] for ln in (tmp_path / "cap.jsonl").read_text().splitlines()[1:]] \
        == [b"right after the restart".hex()]


def test_observer_refused_without_its_user(tmp_path: Path,
                                           hall_broker: Callable[[Keystore], Mosquitto]) -> None:
    """The production config (no observer): the capture cannot log in, and says so."""
    broker = hall_broker(make_keystore())
    with Capture(tmp_path / "cap.jsonl", {"capture": 1}) as cap, \
            pytest.raises(CaptureError, match="refused"):
        cap.attach("hall:hf01", "127.0.0.1", broker.port, OBSERVER_PASSWORD, timeout=5)


# -- a captured chain, re-verified by pycose -----------------------------------------------------------
def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines()]


def _cose_payload(data: bytes) -> tuple[bytes, dict[int, Any]]:
    """(kid, payload map) of a COSE message, unverified: only to see what the capture holds so far."""
    item = cbor2.loads(data)
    prot, _unprot, payload, _tag = item.value
    return cbor2.loads(prot)[4], cbor2.loads(payload)


def _seen(path: Path) -> tuple[set[tuple[str, int, int]], set[tuple[str, int, int]], bool]:
    """Ratings the capture saw inside batches, ratings it saw acked to keypads, every batch's ack seen."""
    batched: set[tuple[str, int, int]] = set()
    acked: set[tuple[str, int, int]] = set()
    batches: set[int] = set()
    batch_acks: set[int] = set()
    for rec in _lines(path)[1:]:
        kid, m = _cose_payload(bytes.fromhex(rec["payload_hex"]))
        if rec["direction"] == "batch":
            batches.add(m[2])
            for e in m[4]:
                if e[0] == 1:
                    dkid, dm = _cose_payload(e[1])
                    if dm[0] == 1:
                        batched.add((dkid.decode(), dm[1], dm[2]))
        elif rec["direction"] == "ack":
            batch_acks.add(m[2])
        elif rec["direction"] == "down" and m[0] == 16:
            acked.update((kid.decode(), m[1], s) for s in m[10])
    return batched, acked, batches <= batch_acks


@dataclass
class Captured:
    path: Path
    header: dict[str, Any]
    made: set[tuple[str, int, int]]
    report: dict[str, Any]
    chain_header: dict[str, Any]


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Captured:
    """2 reference keypads, 10 rated transactions, a capture attached before the keypads start."""
    work = tmp_path_factory.mktemp("capture")
    path = work / "capture.jsonl"
    chain = Chain(ChainConfig(workdir=work / "chain", devices=2, retry_s=1.0))
    cap = start_captured(chain, path)
    try:
        chain.sign_in("1", "10001", "张伟")
        chain.sign_in("2", "10002", "王芳")
        rng = random.Random(7)
        for k in range(5):
            chain.serve("hf01-w01", rng, f"A-{k}")
            chain.serve("hf01-w02", rng, f"B-{k}")
        assert chain.wait_settled(60)
        made = set(chain.ledger.ratings)

        def complete(_c: Capture) -> bool:
            batched, acked, batches_acked = _seen(path)
            return made <= batched and made <= acked and batches_acked

        # The observer gets its copies alongside the gateway and the province, not before them: wait
        # until the capture holds every rating batched, every keypad ack and every batch ack.
        assert cap.wait_for(complete, 20), "the capture did not see the whole run"
        report = chain.reconcile()
        chain_header = header_for(chain)
    finally:
        chain.stop()
        cap.close()
    lines = _lines(path)
    return Captured(path, lines[0], made, report, chain_header)


def test_capture_holds_header_and_both_brokers(captured: Captured) -> None:
    assert captured.report["ratings_made"] == 10 == len(captured.made)
    assert (captured.report["lost"], captured.report["duplicated"]) == (0, 0)
    h = captured.header
    assert h == captured.chain_header
    assert h["capture"] == 1 and set(h["halls"]) == {"hf01"}
    assert set(h["devices"]) == {"hf01-w01", "hf01-w02"}
    for d in h["devices"].values():
        assert len(bytes.fromhex(d["key"])) == 32 and d["epoch"] == 1 and d["hall"] == "hf01"
    assert len(bytes.fromhex(h["halls"]["hf01"]["gateway_public_key"])) == 32
    assert len(bytes.fromhex(h["province_public_key"])) == 32
    recs = _lines(captured.path)[1:]
    assert {(r["broker"], r["direction"]) for r in recs} >= {
        ("hall:hf01", "up"), ("hall:hf01", "down"), ("province", "batch"), ("province", "ack")}
    for r in recs:
        assert set(r) == {"t", "broker", "direction", "topic", "payload_hex"}
        assert r["direction"] == r["topic"].rsplit("/", 1)[1]
        assert r["broker"] == ("province" if r["direction"] in ("batch", "ack") else "hall:hf01")
    ts = [r["t"] for r in recs]
    assert ts == sorted(ts)
    # The keypads' first hellos are there: the capture was attached before they started.
    first_up = {r["topic"]: _cose_payload(bytes.fromhex(r["payload_hex"]))[1][0]
                for r in reversed(recs) if r["direction"] == "up"}
    assert first_up == {"cs/1/d/hf01-w01/up": 3, "cs/1/d/hf01-w02/up": 3}


def _xcheck(path: Path) -> tuple[int, dict[str, Any]]:
    if not XPY.exists():
        pytest.skip(f"pycose cross-check venv missing: {XPY} (run `make xcheck` to build it)")
    proc = subprocess.run([str(XPY), str(XCHECK), str(path)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.stdout, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    assert out["pycose"] == "1.1.0"
    return proc.returncode, out


@pytest.fixture(scope="module")
def xchecked(captured: Captured) -> tuple[int, dict[str, Any]]:
    return _xcheck(captured.path)


def test_xcheck_verifies_every_message(captured: Captured, xchecked: tuple[int, dict[str, Any]]) -> None:
    rc, out = xchecked
    assert out["failures"] == [] and out["failed"] == {} and rc == 0
    recs = _lines(captured.path)[1:]
    assert out["messages"] == len(recs)
    by_dir: dict[str, int] = {}
    for r in recs:
        by_dir[r["direction"]] = by_dir.get(r["direction"], 0) + 1
    # Every line was verified (wills, unauthenticated by design, are the only ones skipped) ...
    assert {k: v for k, v in out["verified"].items() if k != "batch_entry"} == \
        {k: v for k, v in by_dir.items() if k != "will"}
    assert out["skipped"] == ({"will": by_dir["will"]} if "will" in by_dir else {})
    # ... and every keypad message inside the batches, with the keypad's key: all ten ratings.
    assert out["verified"]["batch_entry"] >= 10
    assert out["ratings_batched"] == len(captured.made) == out["ratings_up"]
    assert out["ratings_up_not_batched"] == []


def test_xcheck_independent_of_the_project() -> None:
    src = XCHECK.read_text(encoding="utf-8")
    assert "import countersign" not in src and "from countersign" not in src


@pytest.mark.parametrize("direction", ["up", "down", "batch", "ack"])
def test_xcheck_reports_a_flipped_byte(captured: Captured, xchecked: tuple[int, dict[str, Any]],
                                       tmp_path: Path, direction: str) -> None:
    """One byte flipped in the middle of one message: exactly that line is reported, nothing else."""
    lines = captured.path.read_text(encoding="utf-8").splitlines()
    n = next(i for i, ln in enumerate(lines) if i and json.loads(ln)["direction"] == direction)
    rec = json.loads(lines[n])
    data = bytearray(bytes.fromhex(rec["payload_hex"]))
    data[len(data) // 2] ^= 0x01
    rec["payload_hex"] = data.hex()
    lines[n] = json.dumps(rec)
    bad = tmp_path / "tampered.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rc, out = _xcheck(bad)
    good = xchecked[1]
    assert rc == 1
    assert [(f["line"], f["kind"], f["topic"]) for f in out["failures"]] == [(n + 1, direction, rec["topic"])]
    assert out["failed"] == {direction: 1}
    assert out["verified"][direction] == good["verified"][direction] - 1


def test_enable_observer_changes_only_the_observer(tmp_path: Path) -> None:
    chain = Chain(ChainConfig(workdir=tmp_path / "chain", devices=1))
    try:
        hall_conf = chain.first.broker.conf
        before = {p: p.read_text() for p in (hall_conf, chain.province_broker.conf)}
        pw = enable_observer(chain)
        assert len(pw) >= 16
        for conf, text in before.items():    # the brokers' own settings are untouched
            assert conf.read_text() == text
            assert OBSERVER_USER in (conf.parent / "acl").read_text()
            assert OBSERVER_USER in _users(conf.parent / "passwd")
        # Chain building its configs some other way than enable_observer assumes is refused, loudly.
        hall_conf.write_text(hall_conf.read_text() + "max_connections 5\n")
        with pytest.raises(CaptureError, match="changed more than the observer"):
            enable_observer(chain)
        assert hall_conf.read_text().endswith("max_connections 5\n")
    finally:
        chain.stop()
