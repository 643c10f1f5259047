"""Key check value: names a device key without revealing it.

A hall gateway's enrollment notice carries it, so the province can tell that the key the technician
uploaded is the key the gateway holds, without the key ever travelling through the gateway's uplink.
HMAC-SHA256 with a fixed message is one-way: the 8 bytes say nothing usable about the 32-byte key.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["KCV_HEX_LEN", "key_check_value"]

KCV_MESSAGE = b"countersign-kcv"
KCV_HEX_LEN = 16                 # 8 bytes, lowercase hex


def key_check_value(key: bytes) -> str:
    """The first 8 bytes, in lowercase hex, of HMAC-SHA256(key, b"countersign-kcv")."""
    return hmac.new(key, KCV_MESSAGE, hashlib.sha256).digest()[:8].hex()
