"""Differential fuzzing of the two codecs: mutated device messages judged by the CPython
reference (protocol/cose.py, messages.py) and by the keypad's codec on the MicroPython unix port
(firmware/cs, through tests/fw/mp_verdicts.py, thousands of inputs per interpreter process).

A finding is a crash (any exception but a ProtocolError on CPython, anything but ValueError on the
firmware), a disagreement of the two verdicts, or a decode slower than ``--slow-ms``; each is saved as a
JSON vector under protocol/vectors/fuzz/ and makes the run exit 1. The run prints inputs per second, the
total, and the worst input found per second of CPU (the slowest CPython decode, its time and size).

    python tools/fuzz.py --total 1000000          # make fuzz
    python tools/fuzz.py --total 20000 --seed 7   # a short seeded pass (tests/test_17_fuzz.py)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from countersign.protocol import cbor, cose, messages
from countersign.protocol.errors import ProtocolError

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "protocol" / "vectors"
FINDINGS = VECTORS / "fuzz"
FW_SCRIPT = ROOT / "tests" / "fw" / "mp_verdicts.py"
KEY = bytes(range(32))
KID = b"hf01-w01"
# Known, documented reason differences between the gateway's up path and the firmware's decode_up:
# none today. A pair listed here is (cpython reason, firmware reason).
KNOWN_DIFFERENCES: frozenset[tuple[str, str]] = frozenset()


def cpython_verdict(kind: str, data: bytes) -> str:
    """'ok' or the reason. kind: 'u' gateway up path, 'd' keypad down path, 'c' CBOR alone."""
    try:
        if kind == "c":
            cbor.loads(data, max_size=1 << 20, max_depth=16, max_items=1 << 16)
        else:
            v = cose.mac0_verify(data, lambda k: KEY if k == KID else None, expected_kid=KID)
            messages.decode_payload(v.payload, messages.DEVICE_UP if kind == "u" else messages.DEVICE_DOWN)
    except ProtocolError as exc:
        return exc.reason
    return "ok"


def micropython() -> str:
    exe = Path(sys.executable).parent / "micropython"
    return str(exe) if exe.exists() else "micropython"


def firmware_verdicts(cases: list[tuple[str, bytes]], timeout: float = 600) -> list[str]:
    """The firmware's verdict on every case, in one MicroPython process."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="ascii") as fh:
        fh.write(f"{KEY.hex()} {KID.hex()}\n")
        for kind, data in cases:
            fh.write(f"{kind} {data.hex()}\n")
        path = fh.name
    try:
        env = dict(os.environ, CS_FIRMWARE=str(ROOT / "firmware"), CS_VERDICT_IN=path)
        r = subprocess.run([micropython(), str(FW_SCRIPT)], env=env, capture_output=True, text=True,
                           timeout=timeout, check=False)
    finally:
        os.unlink(path)
    lines = r.stdout.split("\n")
    if r.returncode != 0 or f"END {len(cases)}" not in lines:
        raise RuntimeError(f"mp_verdicts.py failed (rc {r.returncode}): {r.stderr[-2000:]}")
    return lines[:len(cases)]


# ---- inputs ------------------------------------------------------------------------------------------

def seeds() -> list[tuple[str, bytes]]:
    """Every golden and regression vector made with the fuzz key, by its direction."""
    out = []
    for p in sorted([*VECTORS.glob("*.json"), *(VECTORS / "regress").glob("*.json")]):
        vec = json.loads(p.read_text(encoding="utf-8"))
        if vec["key_hex"] == KEY.hex() and vec["kid_hex"] == KID.hex():
            out.append(("u" if vec["direction"] == "up" else "d", bytes.fromhex(vec["output_hex"])))
    return out


INTERESTING = bytes([0x00, 0x01, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1F, 0x20, 0x3F, 0x40, 0x5F, 0x60, 0x7F,
                     0x80, 0x9F, 0xA0, 0xBF, 0xC0, 0xD1, 0xD2, 0xF4, 0xF5, 0xF6, 0xF7, 0xF9, 0xFF, 0xC3,
                     0xED, 0xF0])


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.randrange(8)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:                                  # flip a bit
            b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:                                # an interesting byte
            b[min(i, len(b) - 1)] = rng.choice(INTERESTING)
        elif op == 2:                                      # insert
            b[i:i] = bytes([rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randrange(256)])
        elif op == 3 and b:                                # delete a run
            del b[i:i + rng.randrange(1, 4)]
        elif op == 4:                                      # truncate
            del b[i:]
        elif op == 5 and b:                                # any byte
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 6:                                      # splice a piece of another input
            other = rng.choice(pool)
            j = rng.randrange(len(other) + 1)
            b[i:i] = other[j:j + rng.randrange(1, 12)]
        else:                                              # duplicate a run
            b[i:i] = b[i:i + rng.randrange(1, 6)]
    return bytes(b)


def remac(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """Mutate the payload or protected header inside a message and MAC it again, so the mutation gets
    past the MAC into the header and payload decoders."""
    try:
        item = cbor.loads(data, max_size=1 << 16, max_depth=4, max_items=64, allowed_tags=(17,))
        prot, _u, payload, _t = item.value
    except (ProtocolError, ValueError, TypeError, AttributeError):
        return mutate(rng, data, pool)
    if not isinstance(prot, bytes) or not isinstance(payload, bytes):
        return mutate(rng, data, pool)
    if rng.random() < 0.2:
        prot = mutate(rng, prot, pool)
    else:
        payload = mutate(rng, payload, pool)
    tag = cose.mac0_tag(KEY, prot, payload)
    return b"\xd1\x84" + cbor.dumps(prot) + b"\xa0" + cbor.dumps(payload) + cbor.dumps(tag)


def cases(rng: random.Random, base: list[tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
    pool = [d for _, d in base]
    while True:
        kind, data = rng.choice(base)
        r = rng.random()
        if r < 0.45:
            yield kind, mutate(rng, data, pool)
        elif r < 0.9:
            yield kind, remac(rng, data, pool)
        else:                                  # the payload alone, as raw CBOR
            try:
                payload = cbor.loads(data, max_size=1 << 16, max_depth=4, max_items=64,
                                     allowed_tags=(17,)).value[2]
            except (ProtocolError, ValueError, TypeError, AttributeError, LookupError):
                payload = data
            yield "c", mutate(rng, bytes(payload), pool)


# ---- the run -----------------------------------------------------------------------------------------

@dataclass
class Report:
    total: int = 0
    seconds: float = 0.0
    findings: list[dict[str, str]] = field(default_factory=list)
    worst_s: float = 0.0
    worst_input: bytes = b""
    reasons: dict[str, int] = field(default_factory=dict)


def _save(finding: dict[str, str], save: bool) -> None:
    if not save:
        return
    FINDINGS.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(finding["input_hex"].encode()).hexdigest()[:12]
    (FINDINGS / f"fuzz-{finding['what']}-{name}.json").write_text(
        json.dumps(finding, indent=1) + "\n", encoding="utf-8")


def run(total: int, seed: int, batch: int = 5000, firmware: bool = True, save: bool = True,
        slow_ms: float = 50.0, out: Callable[[str], None] = print) -> Report:
    rng = random.Random(seed)
    rep = Report()
    gen = cases(rng, seeds())
    t0 = time.monotonic()
    last = t0
    while rep.total < total:
        group = [next(gen) for _ in range(min(batch, total - rep.total))]
        verdicts = []
        for kind, data in group:
            c0 = time.process_time()
            try:
                v = cpython_verdict(kind, data)
            except Exception as exc:   # a crash is the finding, whatever its type
                v = f"CRASH {type(exc).__name__}: {exc}"
            spent = time.process_time() - c0
            if spent > rep.worst_s:
                rep.worst_s, rep.worst_input = spent, data
            if spent * 1000 > slow_ms:
                f = {"what": "slow", "kind": kind, "input_hex": data.hex(), "cpython": v,
                     "detail": f"{spent * 1000:.1f} ms of CPU"}
                rep.findings.append(f)
                _save(f, save)
            if v.startswith("CRASH"):
                f = {"what": "crash", "kind": kind, "input_hex": data.hex(), "cpython": v}
                rep.findings.append(f)
                _save(f, save)
            verdicts.append(v)
            rep.reasons[v] = rep.reasons.get(v, 0) + 1
        if firmware:
            for (kind, data), cp, fw in zip(group, verdicts, firmware_verdicts(group), strict=True):
                if cp != fw and (cp, fw) not in KNOWN_DIFFERENCES:
                    f = {"what": "crash" if fw.startswith("CRASH") else "disagreement", "kind": kind,
                         "input_hex": data.hex(), "cpython": cp, "firmware": fw}
                    rep.findings.append(f)
                    _save(f, save)
        rep.total += len(group)
        now = time.monotonic()
        if now - last >= 5 or rep.total >= total:
            out(f"fuzz: {rep.total} inputs, {rep.total / (now - t0):.0f} inputs/s, "
                f"{len(rep.findings)} findings")
            last = now
    rep.seconds = time.monotonic() - t0
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--total", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--batch", type=int, default=5000, help="inputs per MicroPython process")
    ap.add_argument("--no-firmware", action="store_true")
    ap.add_argument("--slow-ms", type=float, default=50.0, help="a decode slower than this is a finding")
    args = ap.parse_args(argv)
    print(f"fuzz: seed {args.seed}, {args.total} inputs, {args.batch} per MicroPython process")
    rep = run(args.total, args.seed, args.batch, not args.no_firmware, slow_ms=args.slow_ms)
    print(f"fuzz: total {rep.total} inputs in {rep.seconds:.1f} s ({rep.total / rep.seconds:.0f} inputs/s), "
          f"{len(rep.findings)} findings")
    print(f"fuzz: worst input per CPU second: {rep.worst_s * 1e6:.0f} us for {len(rep.worst_input)} bytes "
          f"({1 / rep.worst_s if rep.worst_s else 0:.0f} such inputs per CPU second): "
          f"{rep.worst_input.hex()}")
    top = sorted(rep.reasons.items(), key=lambda kv: -kv[1])[:12]
    print("fuzz: verdicts " + ", ".join(f"{k} {v}" for k, v in top))
    for f in rep.findings[:20]:
        print("finding:", json.dumps(f))
    return 1 if rep.findings else 0


if __name__ == "__main__":
    sys.exit(main())
