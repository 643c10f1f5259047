"""`countersign device replace`: a new keypad (or the same one reflashed) takes over a window.

Old keypad D1 (epoch e) at window W; new keypad D2: a new id (``<hall>-<hex>``) or, with ``--same-id``,
D1's id again, in both cases with epoch e+1 and a new key. In order:

1. D1's unsent ratings are read from its outbox over its serial port, in service mode (keys 1 and 4
   held at power-up; in normal mode it offers no REPL and the tool says how to restart it). Its app is
   stopped and stays stopped for the whole replacement (the session is held open, its watchdog
   extended): D1 makes no new rating and sends nothing itself from here on; afterwards, left in its
   REPL, its own watchdog resets it. They are COSE_Mac0 messages D1 already signed, so the tool publishes them
   to the hall broker exactly as D1 would (user D1, D1's broker password derived from its registered
   key, QoS 1 on D1's up topic) and waits for the gateway's acks (MAC verified with D1's key) on D1's
   down topic: an acked seq is committed at the gateway. This works whether or not D1 itself could
   still reach the broker (a dead Wi-Fi module is a usual reason to replace a keypad).
2. Any seq not acked within ``--drain-timeout`` is listed exactly (epoch/seq) and D1 is NOT revoked
   (exit 2), unless ``--force-revoke``; likewise when D1 does not answer on its port (its outbox cannot
   be read) or no old port is given.
3. D2 is provisioned (provision.py) on ``--port`` (the same port for ``--same-id``: its old outbox and
   counters are wiped only now, after step 1), and in the same write of each hall file D1 is revoked
   (keystore and registry ``revoked: true``, its broker password line removed) and D2 added; SIGHUPs.
   With ``--same-id`` the entry is re-keyed instead (the old key is gone from every file). With
   ``--enrollment-dir`` D2's enrollment record (its new key and epoch) is written there, as by provision.

Known limit (``--same-id``): the province registry holds one key per device id, so ratings of epoch e
that the gateway has not yet forwarded would fail the province's MAC check after the re-key. The tool
therefore waits for the gateway's forwarding backlog to drain when ``--gateway-url`` is given, and says
so when it is not.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from countersign.protocol import cose, messages, topics
from countersign.protocol.errors import ProtocolError
from countersign.protocol.keystore import mqtt_password

from . import outbox as obx
from .errors import SERVICE_MODE, DeviceToolError, NoAnswer, NormalMode, Refused
from .hall import HallFiles
from .link import KeypadLink
from .provision import ProvisionRequest, Result, check_broker_host, provision, read_state


@dataclass
class Drained:
    acked: set[tuple[int, int]] = field(default_factory=set)
    outstanding: list[tuple[int, int]] = field(default_factory=list)


def drain(device: str, key: bytes, pending: list[obx.Pending], host: str, port: int,
          timeout: float) -> Drained:
    """Publish ``pending`` as ``device`` and wait for the gateway's acks of every one of them."""
    import paho.mqtt.client as mqtt

    from countersign.common.mqtt import Handlers, Options, make_client

    want = {(p.epoch, p.seq) for p in pending}
    res = Drained()
    if not want:
        return res
    cv = threading.Condition()
    connected = threading.Event()
    failed: list[str] = []
    sub = threading.Event()

    def on_refused(reason: str) -> None:
        failed.append(reason)
        connected.set()

    def on_message(msg: mqtt.MQTTMessage) -> None:
        try:
            v = cose.mac0_verify(bytes(msg.payload), lambda _kid: key, expected_kid=device.encode())
            m = messages.decode_payload(v.payload, messages.DEVICE_DOWN)
        except ProtocolError:
            return                          # not a downlink we can trust: ignore it
        if isinstance(m, messages.Ack):
            with cv:
                res.acked.update((m.epoch, s) for s in m.seqs)
                cv.notify_all()

    # One short session as the keypad; paho's own reconnect delays (1 to 120 s), not jittered.
    c = make_client(Options(client_id=device, username=device, password=mqtt_password(key),
                            reconnect_min_s=1, reconnect_max_s=120, jitter=False),
                    Handlers(connected=lambda _present: connected.set(), refused=on_refused,
                             subscribed=lambda _ok, _reasons: sub.set(), message=on_message))
    try:
        c.connect(host, port, keepalive=30)
    except OSError as exc:
        raise DeviceToolError(f"cannot reach the hall broker {host}:{port}: {exc}") from exc
    c.loop_start()
    try:
        if not connected.wait(timeout) or failed:
            raise DeviceToolError(f"the hall broker {host}:{port} refused {device}: "
                                  f"{failed[0] if failed else 'no answer'}")
        c.subscribe(topics.device_down(device), qos=1)
        sub.wait(timeout)
        for p in pending:
            c.publish(topics.device_up(device), p.msg, qos=1)
        with cv:
            cv.wait_for(lambda: want <= res.acked, timeout)
    finally:
        c.disconnect()
        c.loop_stop()
    res.outstanding = sorted(want - res.acked)
    return res


_BACKLOG = re.compile(r"^countersign_gateway_backlog\{[^}]*\} (\d+)$", re.M)


def wait_forwarded(url: str, timeout: float, poll: Callable[[float], object]) -> bool:
    """True once the gateway's forwarding backlog is 0. Read from its /metrics, which needs no
    credential (counts only; /v1/status is for the counter systems' credentials)."""
    waited = 0.0
    while waited <= timeout:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=5) as r:
                m = _BACKLOG.search(r.read().decode("utf-8"))
                if m is not None and int(m.group(1)) == 0:
                    return True
        except (OSError, ValueError):
            pass
        poll(1.0)
        waited += 1.0
    return False


@dataclass
class ReplaceResult:
    old: str
    reconciled: list[tuple[int, int]]
    outstanding: list[tuple[int, int]]
    new: Result


def replace(hall: HallFiles, old: str, port: str, req: ProvisionRequest, *, old_port: str | None,
            same_id: bool = False, force_revoke: bool = False, drain_timeout: float = 30.0,
            timeout: float = 5.0, gateway_url: str | None = None,
            say: Callable[[str], None] = print) -> ReplaceResult:
    check_broker_host(req.broker_host)
    ks = hall.load()
    dk = ks.devices.get(old)
    if dk is None or dk.revoked:
        raise DeviceToolError(f"{old} is not an active keypad in {hall.keystore}")
    req.window = dk.window
    req.scale = dk.scale
    req.epoch = req.epoch if req.epoch is not None else dk.epoch + 1
    if same_id:
        req.device_id = old
    reconciled: list[tuple[int, int]] = []
    outstanding: list[tuple[int, int]] = []
    pending: list[obx.Pending] | None = None
    with contextlib.ExitStack() as stack:
        old_link: KeypadLink | None = None
        if old_port is not None:
            try:
                old_link = stack.enter_context(KeypadLink(old_port, timeout))
                st = read_state(old_link)
            except NoAnswer as exc:
                why = (f"the old keypad on {old_port} runs in normal mode, which offers no REPL: "
                       f"{SERVICE_MODE}, then run replace again" if isinstance(exc, NormalMode) else str(exc))
                if not force_revoke:
                    raise Refused(f"{why}; its unsent ratings cannot be read: {old} is not revoked "
                                  "(--force-revoke to revoke it anyway)") from exc
                say(f"warning: {why}; revoking {old} without its unsent ratings (--force-revoke)")
                st = None
            if st is not None:
                if st.config is not None and st.config.get("device_id") != old:
                    raise Refused(f"the keypad on {old_port} is {st.config.get('device_id')}, not {old}")
                pending = st.outbox.pending
        elif not force_revoke:
            raise Refused(f"give the old keypad's port (--old-port) so its unsent ratings are reconciled, "
                          f"or --force-revoke to revoke {old} without them")
        if pending:
            say(f"{old}: {len(pending)} unsent ratings (epoch/seq "
                + " ".join(f"{p.epoch}/{p.seq}" for p in pending[:20])
                + (" ..." if len(pending) > 20 else "") + "): publishing them to the gateway")
            d = drain(old, dk.key, pending, req.broker_host, req.broker_port, drain_timeout)
            reconciled = sorted(d.acked & {(p.epoch, p.seq) for p in pending})
            outstanding = d.outstanding
            if outstanding:
                listing = " ".join(f"{e}/{s}" for e, s in outstanding)
                if not force_revoke:
                    raise Refused(f"{len(outstanding)} ratings of {old} are not acked by the gateway "
                                  f"(epoch/seq {listing}): {old} is not revoked (--force-revoke to do it "
                                  "anyway)")
                say(f"warning: revoking {old} with {len(outstanding)} ratings unacked: {listing}")
            say(f"{old}: {len(reconciled)} ratings acked by the gateway")
        elif pending is not None:
            say(f"{old}: outbox empty, nothing to reconcile")
        if same_id:
            if gateway_url is None:
                say("note: ratings the gateway has not forwarded yet will fail the province's check after "
                    "the re-key; give --gateway-url to wait for its backlog")
            elif not wait_forwarded(gateway_url, drain_timeout, threading.Event().wait):
                raise Refused("the gateway's forwarding backlog did not drain: not re-keying yet")
        # The same keypad (--same-id on its own port) is provisioned in the session that read it.
        same = old_link if old_link is not None and os.path.realpath(port) == os.path.realpath(
            old_port or "") else None
        new = provision(port, hall, req, force=True, timeout=timeout, replacing=old,
                        revoke=[] if same_id else [old], allow_pending=True, link=same)
    return ReplaceResult(old, reconciled, outstanding, new)
