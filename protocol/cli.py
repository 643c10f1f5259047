"""`countersign decode`: decode and verify one device message (COSE_Mac0) or gateway batch / province ack
(COSE_Sign1), print it as JSON with field names.

Exit codes: 0 verified and decoded; 2 rejected (prints ``rejected: <reason>: <message>`` to stderr, the
same ``reason`` the gateway and province use); 1 the input or a key file could not be read.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import batch, cose, messages
from .context import Context
from .errors import ProtocolError
from .keystore import Keystore
from .limits import MAX_BATCH_MESSAGE

PROVINCE_KID = b"province"


class InputError(Exception):
    """The command could not even try: unreadable input, bad hex, unreadable key."""


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Decode and verify a device message (COSE_Mac0) or a gateway batch / province "
                          "batch ack (COSE_Sign1). Prints JSON; exit 2 if the message is rejected.")
    parser.add_argument("input", nargs="?", help="the message as hex, or '-' to read stdin (raw or hex)")
    parser.add_argument("--file", type=Path, help="read the message from a file (raw bytes or hex text)")
    parser.add_argument("--key", help="a device key (64 hex digits) for a device message")
    parser.add_argument("--keystore", type=Path,
                        help="a keystore JSON (devices, and halls with gateway public keys)")
    parser.add_argument("--gateway-key", help="a hall gateway's Ed25519 public key (64 hex) for a batch")
    parser.add_argument("--province-key", help="the province's Ed25519 public key (64 hex) for a batch ack")
    parser.add_argument("--direction", choices=("up", "down", "any"), default="any",
                        help="the input is a device message of this direction (default: any message)")
    parser.set_defaults(func=run)


def _parse_hex(text: str, what: str) -> bytes:
    cleaned = "".join(text.split())
    try:
        return bytes.fromhex(cleaned)
    except ValueError as exc:
        raise InputError(f"{what} is not hex") from exc


def _looks_hex(data: bytes) -> bool:
    text = data.decode("ascii", "replace")
    stripped = "".join(text.split())
    return bool(stripped) and len(stripped) % 2 == 0 and all(c in string.hexdigits for c in stripped)


def read_input(args: argparse.Namespace) -> bytes:
    if args.file is not None and args.input is not None:
        raise InputError("give the message as an argument or --file, not both")
    if args.file is not None:
        try:
            raw = args.file.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {args.file}: {exc}") from exc
    elif args.input == "-":
        raw = sys.stdin.buffer.read(MAX_BATCH_MESSAGE * 2 + 2)
    elif args.input is not None:
        return _parse_hex(args.input, "the message argument")
    else:
        raise InputError("no message: give hex, --file F or '-' for stdin")
    # A COSE message starts with 0xd1 / 0xd2, never an ASCII hex digit: hex text is unambiguous.
    return _parse_hex(raw.decode("ascii"), "the input") if _looks_hex(raw) else raw


def _key(hex_text: str | None, what: str, length: int = 32) -> bytes | None:
    if hex_text is None:
        return None
    key = _parse_hex(hex_text, what)
    if len(key) != length:
        raise InputError(f"{what} must be {length} bytes ({2 * length} hex digits)")
    return key


class Keys:
    def __init__(self, args: argparse.Namespace) -> None:
        self.device_key = _key(args.key, "--key")
        gw = _key(args.gateway_key, "--gateway-key")
        pv = _key(args.province_key, "--province-key")
        self.gateway_key = None if gw is None else Ed25519PublicKey.from_public_bytes(gw)
        self.province_key = None if pv is None else Ed25519PublicKey.from_public_bytes(pv)
        self.keystore: Keystore | None = None
        if args.keystore is not None:
            try:
                self.keystore = Keystore.load(args.keystore)
            except ProtocolError as exc:
                raise InputError(str(exc)) from exc

    def device(self, kid: bytes) -> bytes | None:
        if self.keystore is not None:
            k = self.keystore.key_for(kid)
            if k is not None:
                return k
        return self.device_key

    def gateway(self, kid: bytes) -> Ed25519PublicKey | None:
        if self.keystore is not None:
            k = self.keystore.gateway_public_key(kid)
            if k is not None:
                return k
        return self.gateway_key

    def province(self, kid: bytes) -> Ed25519PublicKey | None:
        return self.province_key if kid == PROVINCE_KID else None


def _kid_text(kid: bytes) -> str:
    try:
        return kid.decode("ascii")
    except UnicodeDecodeError:
        return kid.hex()


def decode_device(data: bytes, keys: Keys, direction: str = "any") -> dict[str, Any]:
    """Verify and decode a device COSE_Mac0; raises ProtocolError with the verifier's reason."""
    v = cose.mac0_verify(data, keys.device)
    allowed = {"up": messages.DEVICE_UP, "down": messages.DEVICE_DOWN}.get(direction, messages.ALL_DEVICE)
    msg = messages.decode_payload(v.payload, allowed)
    fields = {k: list(x) if isinstance(x, tuple) else x for k, x in msg.as_json().items() if k != "type"}
    out: dict[str, Any] = {"cose": "mac0", "kid": _kid_text(v.kid), "verified": True,
                           "type": msg.TYPE.name.lower(),
                           "direction": "up" if msg.TYPE in messages.DEVICE_UP else "down", "fields": fields}
    if isinstance(msg, messages.Rating):
        out["score_name"] = messages.SCORE_NAMES_ZH[msg.scale][msg.score]
        out["satisfied"] = messages.is_satisfied(msg.score, msg.scale)
    return out


def _context_json(c: Context) -> dict[str, Any]:
    return {"window": c.window, "clerk": c.clerk, "service": c.service,
            "service_name": _service_name(c.service), "txn": c.txn, "prompt_ms": c.prompt_ms}


_REPORT_KINDS: dict[type, str] = {
    batch.KeypadStatusEntry: "keypad-status", batch.GatewayStatusEntry: "gateway-status",
    batch.DayCountEntry: "day-count", batch.EnrollEntry: "enroll"}


def _entry_json(i: int, e: batch.Entry, keys: Keys) -> tuple[dict[str, Any], ProtocolError | None]:
    if isinstance(e, batch.PromptEntry):
        return {"index": i, "kind": "prompt", "prompt": e.prompt, "device": e.device,
                **_context_json(e.ctx), "timeout": e.timeout}, None
    if not isinstance(e, batch.DeviceEntry):
        # The gateway's own reports (PROTOCOL.md 9.4): their fields as decoded, no MAC to check.
        return {"index": i, "kind": _REPORT_KINDS[type(e)], **vars(e)}, None
    d: dict[str, Any] = {"index": i, "kind": "device-message", "received_ms": e.received_ms,
                         **_context_json(e.ctx), "msg_hex": e.msg.hex()}
    try:
        d["message"] = decode_device(e.msg, keys, "up")
    except ProtocolError as exc:
        d["message"] = {"verified": False, "kid": _peek(e.msg), "reason": exc.reason, "error": str(exc)}
        return d, exc
    return d, None


def _service_name(code: int) -> str | None:
    names = {int(k): v for k, v in messages.SERVICE_NAMES_ZH.items()}
    return names.get(code)


def _peek(data: bytes) -> str | None:
    kid = cose.peek_kid(data)
    return None if kid is None else _kid_text(kid)


def decode_sign1(data: bytes, keys: Keys) -> tuple[dict[str, Any], list[tuple[int, ProtocolError]]]:
    """Verify and decode a batch or batch ack; returns the JSON and the entries that were rejected."""
    if cose.peek_kid(data) == PROVINCE_KID:
        v = cose.sign1_verify(data, keys.province, expected_kid=PROVINCE_KID)
        ack = batch.decode_batch_ack(v.payload)
        return {"cose": "sign1", "kid": _kid_text(v.kid), "verified": True, "type": "batch_ack",
                "fields": {"hall": ack.hall, "batch": ack.batch, "stored": ack.stored,
                           "duplicates": ack.duplicates,
                           "rejected": [{"index": i, "reason": r} for i, r in ack.rejected]}}, []
    v = cose.sign1_verify(data, keys.gateway)
    b = batch.decode_batch(v.payload)
    if b.hall.encode() != v.kid:
        raise ProtocolError(f"batch hall {b.hall!r} is not the signer {v.kid!r}", "hall-mismatch")
    entries, bad = [], []
    for i, e in enumerate(b.entries):
        d, err = _entry_json(i, e, keys)
        entries.append(d)
        if err is not None:
            bad.append((i, err))
    return {"cose": "sign1", "kid": _kid_text(v.kid), "verified": True, "type": "batch",
            "fields": {"hall": b.hall, "batch": b.batch, "created_ms": b.created_ms, "entries": entries}}, bad


def run(args: argparse.Namespace) -> int:
    try:
        data = read_input(args)
        keys = Keys(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        # Tag 18 (0xd2) is a Sign1, unless the user said it is a device message (--direction up/down).
        if data[:1] == b"\xd2" and args.direction == "any":
            out, bad = decode_sign1(data, keys)
        else:
            out, bad = decode_device(data, keys, args.direction), []
    except ProtocolError as exc:
        print(f"rejected: {exc.reason}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=1, ensure_ascii=False))
    for i, err in bad:
        print(f"rejected: {err.reason}: entry {i}: {err}", file=sys.stderr)
    return 2 if bad else 0
