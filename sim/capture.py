"""Traffic capture of a simulated run: every MQTT message seen on the hall and provincial brokers.

The file is JSON lines. The first line is a header with what a third party needs to re-verify the
traffic with their own tools: every keypad's key and epoch (simulator keys are throw-away), each hall
gateway's Ed25519 public key and the province's. Every further line is one message:

    {"t": 1764367200.123, "broker": "hall:hf01", "direction": "up", "topic": "cs/1/d/hf01-w01/up",
     "payload_hex": "d18443a10105..."}

``direction`` is the topic's last segment: up / down / will on a hall broker, batch / ack on the
provincial one. tests/xcheck_capture.py re-verifies a capture with pycose, importing nothing from here.

The capture logs in as the read-only ``_observer`` user (see ``common.brokerconf.observer_acl``), never
as the gateway: with ``use_username_as_clientid`` a second ``_gateway`` login would kick the real gateway
off. Brokers only have that user when their config was generated with an observer password, which
``enable_observer`` does for a ``Chain`` before its brokers start.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import paho.mqtt.client as mqtt

from countersign.common.mqtt import Handlers, Message, Options, make_client
from countersign.gateway.brokerconf import OBSERVER_USER, write_broker_files
from countersign.protocol import topics
from countersign.province.brokerconf import write_province_broker_files
from countersign.sim.broker import run_as_clause
from countersign.sim.chain import Chain

CAPTURE_VERSION = 1
CAPTURE_FILTER = f"{topics.PREFIX}/#"
PROVINCE_BROKER = "province"


class CaptureError(RuntimeError):
    pass


def hall_broker_name(hall: str) -> str:
    return f"hall:{hall}"


class Capture:
    """Writes the header, then one JSON line per message from every attached broker (thread-safe)."""

    def __init__(self, path: Path, header: Mapping[str, Any]) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._seen = threading.Condition(self._lock)
        self._file: IO[str] | None = open(path, "w", encoding="utf-8")   # noqa: SIM115 (closed in close())
        self._clients: dict[str, mqtt.Client] = {}
        self._where: dict[str, tuple[str, int, str]] = {}          # name -> (host, port, password)
        self._counts: Counter[tuple[str, str]] = Counter()      # (broker, direction) -> messages
        self._write(dict(header))

    # -- writing ------------------------------------------------------------------------------------
    def _write(self, obj: dict[str, Any], stamp: bool = False) -> None:
        with self._lock:
            if self._file is None:
                return   # closed: a message still in a client's pipeline as we shut down
            if stamp:   # taken under the lock, so the lines of all brokers are in time order
                obj = {"t": time.time(), **obj}
            self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
            # Line by line: a run that dies half-way still leaves a readable capture up to that point.
            self._file.flush()
            if "broker" in obj:
                self._counts[(str(obj["broker"]), str(obj["direction"]))] += 1
            self._seen.notify_all()

    def record(self, broker: str, topic: str, payload: bytes) -> None:
        """One message line; ``direction`` is the topic's last segment (up/down/will/batch/ack)."""
        self._write({"broker": broker, "direction": topic.rsplit("/", 1)[-1], "topic": topic,
                     "payload_hex": payload.hex()}, stamp=True)

    # -- brokers ------------------------------------------------------------------------------------
    def attach(self, name: str, host: str, port: int, password: str, timeout: float = 10.0) -> None:
        """Connect as ``_observer`` to one broker and record everything under ``cs/1/#`` (QoS 1).

        Returns once the subscription is granted; raises CaptureError if the login or the subscription
        is refused (a broker config without the observer user, a wrong password) or takes too long.
        """
        if name in self._clients:
            raise CaptureError(f"a broker named {name!r} is already attached")
        subscribed = threading.Event()
        refused: list[str] = []
        # A persistent session (MQTT 3.1.1, clean_session false, like the gateway's): when a fault test
        # restarts a broker, which saves its sessions on the way down, the broker queues for the observer
        # until it is back, so the capture misses nothing around the restart. (Measured: mosquitto 2.0.11
        # does not restore an MQTT 5 session with an expiry interval after a restart.) The session is
        # wiped before and after: nothing stale is delivered into this capture, and no session, with an
        # unbounded queue (the configs have max_queued_messages 0), is left behind by close().
        self._wipe_session(host, port, password, timeout)
        def on_refused(reason: str) -> None:
            refused.append(f"connect refused: {reason}")
            subscribed.set()

        def on_connect(_session_present: bool) -> None:
            # Harmless when the broker still has the session; needed when it lost it (a SIGKILL before
            # its autosave).
            client.subscribe(CAPTURE_FILTER, qos=1)

        def on_subscribe(ok: bool, reasons: list[str]) -> None:
            if not ok:
                refused.append(f"subscription to {CAPTURE_FILTER} refused: {reasons}")
            subscribed.set()

        def on_message(msg: Message) -> None:
            self.record(name, msg.topic, bytes(msg.payload))

        # Back within 1-2 s of a broker restart, so the capture's gap is short.
        client = make_client(
            Options(client_id=OBSERVER_USER, username=OBSERVER_USER, password=password, clean_session=False,
                    reconnect_min_s=1, reconnect_max_s=2, jitter=False),
            Handlers(connected=on_connect, refused=on_refused, subscribed=on_subscribe, message=on_message))
        try:
            client.connect(host, port)
        except OSError as exc:
            raise CaptureError(f"{name}: cannot connect to {host}:{port}: {exc}") from exc
        client.loop_start()
        if not subscribed.wait(timeout) or refused:
            client.disconnect()
            client.loop_stop()
            why = refused[0] if refused else f"no subscription within {timeout}s"
            raise CaptureError(f"{name} ({host}:{port}) as {OBSERVER_USER}: {why}")
        self._clients[name] = client
        self._where[name] = (host, port, password)

    def counts(self) -> dict[tuple[str, str], int]:
        """Messages recorded so far per (broker, direction)."""
        with self._lock:
            return dict(self._counts)

    def wait_for(self, predicate: Callable[[Capture], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds, re-checked after every recorded message.

        The predicate runs without the lock held (it may call ``counts()`` or read the file).
        """
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._seen:
                self._seen.wait(min(left, 0.5))
        return True

    @staticmethod
    def _wipe_session(host: str, port: int, password: str, timeout: float) -> bool:
        """Connect once with a clean session, which drops the observer's stored one; False if unreachable."""
        done = threading.Event()
        # Any CONNACK will do: the clean session was asked for, whatever the broker answered.
        wipe = make_client(
            Options(client_id=OBSERVER_USER, username=OBSERVER_USER, password=password, clean_session=True,
                    reconnect_min_s=1, reconnect_max_s=120, jitter=False),
            Handlers(connected=lambda _sp: done.set(), refused=lambda _r: done.set()))
        try:
            wipe.connect(host, port)
        except OSError:
            return False
        wipe.loop_start()
        ok = done.wait(timeout)
        wipe.disconnect()
        wipe.loop_stop()
        return ok

    def close(self) -> None:
        for name, client in self._clients.items():
            client.disconnect()
            client.loop_stop()
            # A broker that is down keeps the session in its persistence file; the next attach wipes it.
            self._wipe_session(*self._where[name], timeout=5.0)
        self._clients.clear()
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# -- the Chain hooks (sim/chain.py is not changed: these read its public attributes) ------------------
def header_for(chain: Chain) -> dict[str, Any]:
    """The capture header: every key needed to re-verify the chain's traffic."""
    devices: dict[str, dict[str, Any]] = {}
    for h in chain.halls.values():
        for dev, dk in sorted(h.keystore.devices.items()):
            devices[dev] = {"key": dk.key.hex(), "epoch": dk.epoch, "hall": h.hall}
    return {
        "capture": CAPTURE_VERSION,
        "note": "simulator run: throw-away keys",
        "halls": {h.hall: {"gateway_public_key": h.gateway_public.hex()} for h in chain.halls.values()},
        "province_public_key": chain.province_public.hex(),
        "devices": devices,
    }


def _acl_without_observer(text: str) -> str:
    # Blank lines go too: the observer block ends with one.
    return "\n".join(line for line in text.split("\n") if line.strip()
                     and not (OBSERVER_USER in line or line.startswith(f"topic read {CAPTURE_FILTER}")))


def _rewrite_checked(conf: Path, acl: Path, write: Callable[[], object]) -> None:
    """Regenerate a broker's files with the observer; refuse if anything but the observer changed.

    The configs are regenerated from the Chain's own attributes with the arguments Chain passes today;
    should Chain start passing others, the broker config would silently change under it. Comparing the
    conf (which does not depend on passwords) and the ACL (minus the observer block) catches that.
    """
    old_conf, old_acl = conf.read_text(), acl.read_text()
    write()
    same_acl = _acl_without_observer(acl.read_text()) == _acl_without_observer(old_acl)
    if conf.read_text() != old_conf or not same_acl:
        conf.write_text(old_conf)
        raise CaptureError(f"regenerating {conf.parent} with an observer changed more than the observer: "
                           "Chain builds its broker configs differently now; update capture.enable_observer")


def enable_observer(chain: Chain, password: str | None = None) -> str:
    """Add the read-only observer user to every broker config of ``chain``; call before ``chain.start()``.

    Returns the observer password (a fresh random one unless given).
    """
    pw = password if password is not None else secrets.token_urlsafe(16)
    brokers = [h.broker for h in chain.halls.values()] + [chain.province_broker]
    if any(b.proc is not None for b in brokers):
        raise CaptureError("enable_observer must run before the chain's brokers start")
    for h in chain.halls.values():
        _rewrite_checked(h.broker.conf, h.broker.conf.parent / "acl", lambda h=h: write_broker_files(  # type: ignore[misc]
            h.broker.conf.parent, h.keystore, h.gateway_password, port=h.port, bind="127.0.0.1",
            run_as=run_as_clause(), observer_password=pw))
    pb = chain.province_broker
    _rewrite_checked(pb.conf, pb.conf.parent / "acl", lambda: write_province_broker_files(
        pb.conf.parent, chain.registry, {h.hall: h.uplink_password for h in chain.halls.values()},
        chain.province_password, port=chain.prov_port, bind="127.0.0.1", run_as=run_as_clause(),
        workers=chain.cfg.province_workers, observer_password=pw))
    return pw


def attach_to_chain(capture: Capture, chain: Chain, password: str, timeout: float = 10.0) -> None:
    """Attach ``capture`` to the provincial broker and every hall broker of a started chain."""
    capture.attach(PROVINCE_BROKER, "127.0.0.1", chain.prov_port, password, timeout)
    for h in chain.halls.values():
        capture.attach(hall_broker_name(h.hall), "127.0.0.1", h.port, password, timeout)


def start_captured(chain: Chain, path: Path, password: str | None = None) -> Capture:
    """Start ``chain`` with a capture into ``path`` that sees every keypad message from the first hello.

    Brokers, province and gateways start first, then the capture attaches, then the keypads start (so
    nothing a keypad sends is missed). The caller stops both (``chain.stop()``, ``capture.close()``); on
    an error here both are stopped.
    """
    pw = enable_observer(chain, password)
    chain.start(devices=False)
    capture = Capture(path, header_for(chain))
    try:
        attach_to_chain(capture, chain, pw)
        for dev in chain.device_ids:
            chain.start_device(dev)
    except BaseException:
        capture.close()
        chain.stop()
        raise
    return capture
