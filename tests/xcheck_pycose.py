"""Independent cross-check of the golden vectors with pycose 1.1.0.

Run with the xcheck venv's python (pycose needs cbor2 < 6, the project uses cbor2 6):

    .venv-xcheck/bin/python tests/xcheck_pycose.py protocol/vectors

It imports nothing from the project. For every vector it decodes output_hex with pycose
(Mac0Message.decode, key = SymmetricKey(key_hex), verify_tag) and records whether pycose accepts it; for
good vectors it also builds the COSE_Mac0 itself from payload + key + kid and compares the bytes.
Prints one JSON object: {"pycose": version, "results": {name: {...}}}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def check(vec: dict[str, Any]) -> dict[str, Any]:
    from pycose.algorithms import HMAC256
    from pycose.headers import KID, Algorithm
    from pycose.keys.symmetric import SymmetricKey
    from pycose.messages import CoseMessage, Mac0Message

    key = SymmetricKey(k=bytes.fromhex(vec["key_hex"]))
    out: dict[str, Any] = {"fail": vec["fail"]}
    try:
        msg = CoseMessage.decode(bytes.fromhex(vec["output_hex"]))
        if not isinstance(msg, Mac0Message):
            raise TypeError(f"decoded as {type(msg).__name__}, not Mac0Message")
        msg.key = key
        out["accepts"] = bool(msg.verify_tag())
        out["payload_matches"] = msg.payload == bytes.fromhex(vec["payload_hex"])
    except Exception as exc:  # pycose raises many types; any failure means "does not accept"
        out["accepts"] = False
        out["error"] = f"{type(exc).__name__}: {exc}"
    if not vec["fail"]:
        built = Mac0Message(phdr={Algorithm: HMAC256, KID: bytes.fromhex(vec["kid_hex"])}, uhdr={},
                            payload=bytes.fromhex(vec["payload_hex"]))
        built.key = key
        out["built_hex"] = built.encode(tag=True).hex()
        out["built_matches"] = out["built_hex"] == vec["output_hex"]
    return out


def main(argv: list[str]) -> int:
    import pycose

    default = Path(__file__).resolve().parent.parent / "protocol" / "vectors"
    folder = Path(argv[1]) if len(argv) > 1 else default
    results = {p.stem: check(json.loads(p.read_text(encoding="utf-8")))
               for p in sorted(folder.glob("*.json"))}
    version = getattr(pycose, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("pycose")
    print(json.dumps({"pycose": version, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
