"""`countersign device provision`: give a keypad its identity and register it with the hall.

Steps, in this order (each one a raw-REPL command over the keypad's serial port, see link.py):

1. read what the keypad holds: config.json (present = provisioned), outbox.bin. An unprovisioned
   keypad offers its REPL as it is; a provisioned one only in service mode (keys 1 and 4 held at
   power-up): in normal mode it is refused with how to restart it in service mode;
2. refuse a provisioned keypad without ``--force``, and always refuse one whose outbox still holds
   unsent ratings (``countersign device replace`` reconciles them first);
3. remove config.json and device.key first, together (from here on the keypad is unprovisioned, and an
   unprovisioned keypad, which offers a REPL to anyone with a cable, never holds a registered key), then
   the old outbox and counters (nothing unsent is in them), then write ``device.key`` (new-then-rename,
   a key no file lists yet), then ``config.json.new`` and rename it to ``config.json``: the rename is the
   instant the keypad becomes provisioned. A keypad cut off at any point before it boots
   ``CS:UNPROVISIONED`` and can be provisioned again without ``--force``;
4. read both files back and compare;
5. only then register the key: gateway keystore, the technician's enrollment record
   (``--enrollment-dir``: the file the platform's administrator uploads and approves; enrollment.py),
   province registry (``--registry``: the single small deployment's shortcut, approved at once), broker
   passwd/acl, SIGHUPs (hall.py). If that fails the keypad's config.json and key are removed again
   (roll back), so no keypad is left half provisioned and none keeps a key a file may list;
6. the keypad is reset (machine.reset(), a simulated keypad too): it boots in normal mode;
7. the label (label.py).

Identity: the device id is ``<hall>-<6 hex digits>`` unless given; the key is 32 random bytes unless a
key file is given; the epoch is one more than the id's registered epoch (1 for a new id) unless given,
and a given epoch must be newer than the registered one (seqs restart at 1 in a new epoch: an old epoch
would hand out seqs the gateway already has). ``--broker-host`` must be an IPv4 address: the keypad's
``asyncio.open_connection`` resolves a name with a blocking call, which would stall its key scan and
starve its watchdog. An ESP32 board's config names its board (``board``: esp32c3 or esp32s3, as its
MicroPython reports it), which picks its pin map at boot.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from countersign.protocol import topics
from countersign.protocol.keystore import DeviceKey, Keystore

from . import outbox as obx
from .errors import SERVICE_MODE, DeviceToolError, NormalMode, Refused
from .hall import HallFiles
from .link import KeypadLink

CONFIG = "config.json"
KEY = "device.key"
WIPE = ("outbox.bin", "outbox.bin.new", "state.json", "state.json.new")

Hook = Callable[[str], None]      # called after each step (tests cut the keypad off there)


@dataclass
class Identity:
    device_id: str
    key: bytes
    epoch: int
    hall: str
    window: str
    scale: int = 4


@dataclass
class ProvisionRequest:
    window: str
    broker_host: str
    broker_port: int = 1883
    device_id: str | None = None
    key: bytes | None = None
    epoch: int | None = None
    scale: int = 4
    invite_key: bool = True
    heartbeat_s: int = 60
    wifi_ssid: str | None = None
    wifi_password: str | None = None
    options: dict[str, Any] = field(default_factory=dict)     # board extras: sim_port, wdt_ms, board


@dataclass
class KeypadState:
    config: dict[str, Any] | None
    outbox: obx.OutboxView


def read_state(link: KeypadLink) -> KeypadState:
    raw = link.read_file(CONFIG)
    cfg: dict[str, Any] | None = None
    if raw is not None:
        try:
            loaded = json.loads(raw)
        except ValueError:
            loaded = {"device_id": "?", "broken": True}
        cfg = loaded if isinstance(loaded, dict) else {"device_id": "?", "broken": True}
    return KeypadState(cfg, obx.parse(link.read_file("outbox.bin")))


def check_broker_host(host: str) -> None:
    """The keypad dials the broker by IPv4 address (cs/config.py refuses anything else at boot): a host
    name would be resolved by a blocking call."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError as exc:
        raise DeviceToolError(f"--broker-host {host!r} is not an IPv4 address: the keypad resolves names "
                              "with a blocking call (its key scan and watchdog would stall), so it takes "
                              "only an address; give the gateway's as the keypad reaches it, e.g. "
                              "192.168.10.2") from exc


def choose_identity(ks: Keystore, req: ProvisionRequest, *, same_window_ok: str | None = None) -> Identity:
    hall = ks.hall
    if not hall:
        raise DeviceToolError("the gateway keystore names no hall ('hall' is missing)")
    for dev, dk in ks.devices.items():
        if dk.window == req.window and not dk.revoked and dev not in (req.device_id, same_window_ok):
            raise Refused(f"window {req.window} is served by {dev}: use `countersign device replace`")
    dev = req.device_id or ""
    while not dev or (req.device_id is None and dev in ks.devices):
        dev = f"{hall}-{secrets.token_hex(3)}"
    try:
        topics.check_id(dev)
    except ValueError as exc:
        raise DeviceToolError(str(exc)) from exc
    known = ks.devices.get(dev)
    epoch = req.epoch if req.epoch is not None else (known.epoch + 1 if known else 1)
    if not 0 <= epoch <= 0xFFFF:
        raise DeviceToolError("epoch must be 0..65535")
    if known is not None and epoch <= known.epoch:
        raise Refused(f"{dev} is registered with epoch {known.epoch}: a new provisioning needs a newer one")
    key = req.key if req.key is not None else secrets.token_bytes(32)
    if len(key) != 32:
        raise DeviceToolError("the device key must be 32 bytes")
    return Identity(dev, key, epoch, hall, req.window, req.scale)


def config_doc(ident: Identity, req: ProvisionRequest) -> dict[str, Any]:
    doc: dict[str, Any] = {"device_id": ident.device_id, "epoch": ident.epoch, "hall": ident.hall,
                           "window": ident.window, "scale": ident.scale, "invite_key": req.invite_key,
                           "broker_host": req.broker_host, "broker_port": req.broker_port,
                           "heartbeat_s": req.heartbeat_s}
    if req.wifi_ssid is not None:
        doc["wifi_ssid"] = req.wifi_ssid
    if req.wifi_password is not None:
        doc["wifi_password"] = req.wifi_password
    doc.update(req.options)
    return doc


def write_identity(link: KeypadLink, ident: Identity, doc: dict[str, Any], hook: Hook | None = None) -> None:
    """Step 3 and 4: unprovision, wipe, key, config (the rename last), then read back."""
    step = hook or (lambda _s: None)
    _remove(link, [CONFIG, KEY, CONFIG + ".new", KEY + ".new"])     # the config first, in one command
    step("unprovisioned")
    _remove(link, list(WIPE))
    step("wiped")
    link.write_file(KEY, ident.key)
    step("key-written")
    text = json.dumps(doc).encode()
    link.exec(f"import gc\ngc.collect()\n_f=open('config.json.new','wb')\n_f.write({text!r})\n_f.flush()\n"
              "_f.close()\ndel _f")
    step("config-new-written")
    link.rename(CONFIG + ".new", CONFIG)
    step("config-renamed")
    if link.read_file(KEY) != ident.key or link.read_file(CONFIG) != text:
        unprovision(link)
        raise DeviceToolError(f"keypad on {link.port}: the files read back differ from what was written "
                              "(flash fault?); it is left unprovisioned")


def _remove(link: KeypadLink, paths: list[str]) -> None:
    link.exec(f"import os\nfor _p in {paths!r}:\n try:\n  os.remove(_p)\n except OSError:\n  pass")


def unprovision(link: KeypadLink) -> None:
    """Roll back: config first (the keypad is unprovisioned from here), then the key it must not keep."""
    _remove(link, [CONFIG, KEY])


@dataclass
class Result:
    identity: Identity
    done: list[str]
    virtual: bool


def provision(port: str, hall: HallFiles, req: ProvisionRequest, *, force: bool = False,
              timeout: float = 5.0, hook: Hook | None = None, replacing: str | None = None,
              revoke: list[str] | None = None, allow_pending: bool = False,
              link: KeypadLink | None = None) -> Result:
    """Provision the keypad on ``port``. ``replacing``/``revoke``/``allow_pending`` are for replace.py:
    the window's old keypad, revoked in the same keystore write, whose ratings were reconciled; ``link``
    an open session on ``port`` (replace --same-id: the session that read the old outbox)."""
    check_broker_host(req.broker_host)
    ks = hall.load()
    ident = choose_identity(ks, req, same_window_ok=replacing)
    doc = config_doc(ident, req)
    with contextlib.ExitStack() as stack:
        if link is None:
            try:
                link = stack.enter_context(KeypadLink(port, timeout))
            except NormalMode as exc:
                raise Refused(f"keypad on {port} runs in normal mode (no REPL): to provision it again, "
                              f"{SERVICE_MODE}, then run the command again"
                              if force else
                              f"keypad on {port} is provisioned (it runs in normal mode, no REPL); "
                              "provisioning it again needs --force and service mode: "
                              f"{SERVICE_MODE}") from exc
        st = read_state(link)
        if st.config is not None and not force:
            c = st.config
            raise Refused(f"keypad on {port} is already provisioned as {c.get('device_id')} (hall "
                          f"{c.get('hall')}, window {c.get('window')}, epoch {c.get('epoch')}); "
                          "use --force to provision it again")
        if st.outbox.depth and not allow_pending:
            seqs = ", ".join(f"{e}/{s}" for e, s in st.outbox.seqs()[:20])
            raise Refused(f"keypad on {port} holds {st.outbox.depth} unsent ratings (epoch/seq {seqs}); "
                          "use `countersign device replace` so they reach the gateway first")
        kind = link.board.kind
        if kind in ("esp32c3", "esp32s3") and "board" not in doc:
            doc["board"] = kind             # cs/start.py picks the board module (pins) by it
        write_identity(link, ident, doc, hook)
        dk = DeviceKey(ident.key, ident.epoch, ident.window, ident.scale, ident.hall)
        try:
            done = hall.apply(add={ident.device_id: dk}, revoke=revoke)
        except (DeviceToolError, OSError) as exc:
            unprovision(link)               # roll back: unprovisioned again, and without the key
            raise DeviceToolError(f"registering {ident.device_id} failed, the keypad is unprovisioned "
                                  f"again: {exc}") from exc
        virtual = link.virtual
        link.reset()
    return Result(ident, done, virtual)
