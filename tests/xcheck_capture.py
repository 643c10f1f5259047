"""Re-verify a traffic capture (`countersign.sim.capture`) with an independent COSE implementation.

Run with the xcheck venv's python (pycose 1.1.0 needs cbor2 < 6; the project uses cbor2 6):

    .venv-xcheck/bin/python tests/xcheck_capture.py capture.jsonl

It imports nothing from the project: the message layout below is written from protocol/PROTOCOL.md
(sections 3, 5, 6 and 9), and the only keys used are the ones in the capture's header. For every line:

- ``up`` / ``down`` (hall broker): COSE_Mac0, HMAC 256/256 in the protected header, kid = the topic's
  device id, tag checked with that device's key; the payload is a CBOR map of the direction's types whose
  epoch is the device's epoch;
- ``batch`` (province broker): COSE_Sign1, EdDSA, kid = the topic's hall id, signature checked with that
  hall gateway's public key; then every device message inside it as above, with the device key (and the
  device must belong to that hall);
- ``ack`` (province broker): COSE_Sign1, EdDSA, kid "province", checked with the province's public key;
- ``will``: a device's MQTT last will is unauthenticated by design; counted as skipped.

Prints one JSON object: counts verified / failed / skipped per kind and the list of failures (file line,
kind, topic, reason). Exit status 0 when nothing failed, 1 when something did, 2 when the file is not a
capture.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# PROTOCOL.md section 6: message types (key 0) by direction.
UP_TYPES = {1, 2, 3, 4}            # rating, no-rating, hello, heartbeat
DOWN_TYPES = {16, 17, 18, 19}      # ack, prompt, time sync, session
BATCH, BATCH_ACK = 32, 33
EPOCH_KEY = 1
SEQ_KEY = 2
# Section 9: the batch map and its entries.
BATCH_HALL, BATCH_ENTRIES = 1, 4
ENTRY_KIND_DEVICE, ENTRY_MSG = 1, 1
PROVINCE_KID = b"province"


class Failed(Exception):
    """One message did not verify; the text is the reason reported."""


class Checker:
    def __init__(self, header: dict[str, Any]) -> None:
        from pycose.keys import OKPKey, SymmetricKey
        from pycose.keys.curves import Ed25519

        self.devices: dict[str, tuple[Any, int, str]] = {
            dev: (SymmetricKey(k=bytes.fromhex(d["key"])), int(d["epoch"]), str(d["hall"]))
            for dev, d in header["devices"].items()}
        self.halls = {hall: OKPKey(crv=Ed25519, x=bytes.fromhex(h["gateway_public_key"]))
                      for hall, h in header["halls"].items()}
        self.province = OKPKey(crv=Ed25519, x=bytes.fromhex(header["province_public_key"]))
        self.verified: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.failures: list[dict[str, Any]] = []
        self.ratings_up: set[tuple[str, int, int]] = set()        # (device, epoch, seq) of type 1 seen up
        self.ratings_batched: set[tuple[str, int, int]] = set()   # ... inside verified batches

    # -- COSE --------------------------------------------------------------------------------------
    @staticmethod
    def _headers(msg: Any, alg: Any, kid: bytes) -> None:
        from pycose.headers import KID, Algorithm

        # pycose accepts alg from the unprotected header; the profile does not (PROTOCOL.md 5.3).
        if msg.uhdr:
            raise Failed(f"unprotected header not empty: {msg.uhdr}")
        if set(msg.phdr) != {Algorithm, KID}:
            raise Failed(f"protected header labels {sorted(str(k) for k in msg.phdr)}, want alg and kid")
        if msg.phdr[Algorithm] != alg:
            raise Failed(f"alg {msg.phdr[Algorithm]} in the protected header, want {alg}")
        if msg.phdr[KID] != kid:
            raise Failed(f"kid {msg.phdr[KID]!r}, want {kid!r}")

    def mac0(self, data: bytes, device: str) -> dict[Any, Any]:
        """Verify a device's COSE_Mac0 and return its decoded payload map."""
        from pycose.algorithms import HMAC256
        from pycose.messages import CoseMessage, Mac0Message

        if device not in self.devices:
            raise Failed(f"device {device!r} is not in the capture header")
        key, epoch, _hall = self.devices[device]
        try:
            msg = CoseMessage.decode(data)
        except Exception as exc:   # pycose raises many types; all mean "not a COSE message"
            raise Failed(f"not a COSE message: {type(exc).__name__}: {exc}") from exc
        if not isinstance(msg, Mac0Message):
            raise Failed(f"decoded as {type(msg).__name__}, not COSE_Mac0")
        self._headers(msg, HMAC256, device.encode())
        msg.key = key
        try:
            ok = msg.verify_tag()
        except Exception as exc:
            raise Failed(f"tag check raised {type(exc).__name__}: {exc}") from exc
        if not ok:
            raise Failed("bad MAC")
        payload = self._map(self._loads(msg.payload))
        if EPOCH_KEY in payload and payload[EPOCH_KEY] != epoch:
            raise Failed(f"epoch {payload[EPOCH_KEY]}, the device's key epoch is {epoch}")
        return payload

    def sign1(self, data: bytes, public: Any, kid: bytes) -> dict[Any, Any]:
        from pycose.algorithms import EdDSA
        from pycose.messages import CoseMessage, Sign1Message

        try:
            msg = CoseMessage.decode(data)
        except Exception as exc:
            raise Failed(f"not a COSE message: {type(exc).__name__}: {exc}") from exc
        if not isinstance(msg, Sign1Message):
            raise Failed(f"decoded as {type(msg).__name__}, not COSE_Sign1")
        self._headers(msg, EdDSA, kid)
        msg.key = public
        try:
            ok = msg.verify_signature()
        except Exception as exc:
            raise Failed(f"signature check raised {type(exc).__name__}: {exc}") from exc
        if not ok:
            raise Failed("bad signature")
        return self._map(self._loads(msg.payload))

    @staticmethod
    def _loads(data: bytes) -> Any:
        import cbor2

        try:
            return cbor2.loads(data)
        except Exception as exc:   # cbor2's errors do not share one base across its C and Python decoders
            raise Failed(f"payload is not CBOR: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _map(m: Any) -> dict[Any, Any]:
        if not isinstance(m, dict) or not isinstance(m.get(0), int):
            raise Failed("payload is not a CBOR map with an integer type (key 0)")
        return m

    # -- one capture line --------------------------------------------------------------------------
    def fail(self, line: int, kind: str, rec: dict[str, Any], reason: str, **extra: Any) -> None:
        self.failed[kind] += 1
        self.failures.append({"line": line, "kind": kind, "broker": rec.get("broker"),
                              "topic": rec.get("topic"), "reason": reason, **extra})

    def check(self, line: int, rec: dict[str, Any]) -> None:
        topic = str(rec.get("topic", ""))
        parts = topic.split("/")
        kind = parts[-1] if len(parts) == 5 and parts[:2] == ["cs", "1"] else "unknown"
        try:
            if rec.get("direction") != kind:
                raise Failed(f"direction {rec.get('direction')!r} does not match the topic")
            data = bytes.fromhex(str(rec["payload_hex"]))
            if kind in ("up", "down") and parts[2] == "d":
                payload = self.mac0(data, parts[3])
                types = UP_TYPES if kind == "up" else DOWN_TYPES
                if payload[0] not in types:
                    raise Failed(f"type {payload[0]} on a {kind} topic")
                if kind == "up" and payload[0] == 1:
                    self.ratings_up.add((parts[3], payload[EPOCH_KEY], payload[SEQ_KEY]))
            elif kind == "will" and parts[2] == "d":
                self.skipped[kind] += 1     # unauthenticated by design (PROTOCOL.md section 3)
                return
            elif kind == "batch" and parts[2] == "h":
                self.batch(line, rec, parts[3], data)
            elif kind == "ack" and parts[2] == "h":
                payload = self.sign1(data, self.province, PROVINCE_KID)
                if payload[0] != BATCH_ACK or payload.get(BATCH_HALL) != parts[3]:
                    raise Failed(f"not a batch ack for hall {parts[3]}")
            else:
                raise Failed("not a Countersign topic")
        except Failed as exc:
            self.fail(line, kind, rec, str(exc))
            return
        except (KeyError, ValueError, TypeError) as exc:   # malformed line or payload beyond COSE
            self.fail(line, kind, rec, f"{type(exc).__name__}: {exc}")
            return
        self.verified[kind] += 1

    def batch(self, line: int, rec: dict[str, Any], hall: str, data: bytes) -> None:
        if hall not in self.halls:
            raise Failed(f"hall {hall!r} is not in the capture header")
        payload = self.sign1(data, self.halls[hall], hall.encode())
        if payload[0] != BATCH or payload.get(BATCH_HALL) != hall:
            raise Failed(f"not a batch of hall {hall}")
        entries = payload.get(BATCH_ENTRIES)
        if not isinstance(entries, list):
            raise Failed("batch entries are not an array")
        # The batch itself verified; each device message inside is checked (and counted) on its own.
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or e.get(0) != ENTRY_KIND_DEVICE:
                continue    # prompt records: covered by the batch signature, no device MAC
            try:
                msg = e.get(ENTRY_MSG)
                if not isinstance(msg, bytes):
                    raise Failed("entry message is not a byte string")
                device = self._kid(msg)
                if device in self.devices and self.devices[device][2] != hall:
                    raise Failed(f"device {device} belongs to hall {self.devices[device][2]}, not {hall}")
                m = self.mac0(msg, device)
                if m[0] not in UP_TYPES:
                    raise Failed(f"type {m[0]} inside a batch")
                if m[0] == 1:
                    self.ratings_batched.add((device, m[EPOCH_KEY], m[SEQ_KEY]))
            except Failed as exc:
                self.fail(line, "batch_entry", rec, str(exc), entry=i)
                continue
            except (KeyError, ValueError, TypeError) as exc:
                self.fail(line, "batch_entry", rec, f"{type(exc).__name__}: {exc}", entry=i)
                continue
            self.verified["batch_entry"] += 1

    @staticmethod
    def _kid(data: bytes) -> str:
        """The kid of a device message, read without trusting it (the MAC check then pins it)."""
        from pycose.headers import KID
        from pycose.messages import CoseMessage

        try:
            kid = CoseMessage.decode(data).phdr.get(KID)
        except Exception as exc:
            raise Failed(f"not a COSE message: {type(exc).__name__}: {exc}") from exc
        if not isinstance(kid, bytes):
            raise Failed("no kid in the protected header")
        return kid.decode("ascii", "replace")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    import pycose

    lines = Path(argv[1]).read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0])
        if header.get("capture") != 1:
            raise ValueError(f"capture version {header.get('capture')!r}, want 1")
        checker = Checker(header)
    except (IndexError, ValueError, KeyError, TypeError, AttributeError) as exc:
        print(json.dumps({"error": f"not a capture file: {type(exc).__name__}: {exc}"}))
        return 2
    messages = 0
    for n, text in enumerate(lines[1:], start=2):
        if not text.strip():
            continue
        messages += 1
        try:
            rec = json.loads(text)
            if not isinstance(rec, dict):
                raise ValueError("a line must be a JSON object")
        except ValueError as exc:
            checker.fail(n, "line", {}, f"not JSON: {exc}")
            continue
        try:
            checker.check(n, rec)
        except Exception as exc:
            # A tampered line must be reported, never end the run: whatever this checker did not foresee
            # is that line's failure, with the exception named.
            checker.fail(n, "line", rec, f"unexpected {type(exc).__name__}: {exc}")
    version = getattr(pycose, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("pycose")
    summary = {
        "pycose": version,
        "messages": messages,
        "verified": dict(sorted(checker.verified.items())),
        "failed": dict(sorted(checker.failed.items())),
        "skipped": dict(sorted(checker.skipped.items())),
        "ratings_up": len(checker.ratings_up),
        "ratings_batched": len(checker.ratings_batched),
        "ratings_up_not_batched": sorted(list(k) for k in checker.ratings_up - checker.ratings_batched),
        "failures": checker.failures,
    }
    print(json.dumps(summary, indent=1))
    return 1 if checker.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
