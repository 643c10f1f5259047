# COSE_Mac0 of the device profile (PROTOCOL.md section 5.1): HMAC 256/256 (alg 5), protected header
# exactly {1: 5, 4: kid}, empty unprotected map, empty external_aad, tag 17. Both directions use the
# device key. MicroPython has no hmac module: HMAC-SHA256 (RFC 2104) is written here on hashlib.
from micropython import const
from hashlib import sha256
from cs import cbor

_TAG_MAC0 = const(17)
_ALG = const(5)
_BLOCK = const(64)
_KEY_LEN = const(32)
_MAX_KID = const(16)
_MAX_MSG = const(256)
_MAC0 = b"\x84\x64MAC0"     # MAC_structure: array(4), "MAC0", then protected, h'' and payload
_EMPTY = b"\x40"
_heads = bytearray(6)       # scratch for the two bstr heads hashed by open()


def hmac_sha256(key, *parts):
    if len(key) > _BLOCK:
        key = sha256(key).digest()
    k = bytearray(_BLOCK)
    k[0:len(key)] = key
    for i in range(_BLOCK):
        k[i] ^= 0x36
    h = sha256(k)
    for p in parts:
        h.update(p)
    inner = h.digest()
    for i in range(_BLOCK):
        k[i] ^= 0x36 ^ 0x5C     # ipad -> opad in place
    h = sha256(k)
    h.update(inner)
    return h.digest()


def equal(a, b):
    # Constant time for equal lengths: every byte is looked at, no early exit on a difference.
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0


def _protected(out, pos, kid):
    # bstr( a2 01 05 04 <bstr kid> ): the deterministic {1: 5, 4: kid}
    if isinstance(kid, str):
        kid = kid.encode()
    if not 1 <= len(kid) <= _MAX_KID:
        raise ValueError("bad-kid")
    pos = cbor.put_head(out, pos, 2, 5 + len(kid))
    out[pos] = 0xA2
    out[pos + 1] = 1
    out[pos + 2] = _ALG
    out[pos + 3] = 4
    return cbor.put_bytes(out, pos + 4, kid)


def to_mac(kid, payload, out):
    """Write the MAC_structure ["MAC0", protected, h'', payload] into out; return its length."""
    out[0:6] = _MAC0
    p = _protected(out, 6, kid)
    out[p] = 0x40
    return cbor.put_bytes(out, p + 1, payload)


def seal(key, kid, payload, out):
    """Write 17([protected, {}, payload, tag]) into out (a bytearray); return its length."""
    if len(key) != _KEY_LEN:
        raise ValueError("bad-key")
    out[0] = 0xD1
    out[1] = 0x84
    pe = _protected(out, 2, kid)
    out[pe] = 0xA0
    p0 = pe + 1
    p = cbor.put_bytes(out, p0, payload)
    if p + 34 > _MAX_MSG:
        raise ValueError("oversized")
    mv = memoryview(out)
    # The MAC input is hashed straight from the bytes just written: no MAC_structure copy.
    tag = hmac_sha256(key, _MAC0, mv[2:pe], _EMPTY, mv[p0:p])
    out[p] = 0x58
    out[p + 1] = 32
    out[p + 2:p + 34] = tag
    return p + 34


def open(key, kid, data):
    """Verify a downlink Mac0 for this device; return the payload bytes or raise ValueError(reason).

    Checks in the order of the CPython verifier (PROTOCOL.md 5.3) so the reasons agree. key None means
    no usable key (unknown-device); kid None skips the expected-kid check.
    """
    m = cbor.decode(data, 4, 64, _MAX_MSG, None, _TAG_MAC0)
    if not isinstance(m, cbor.Tag) or m.tag != _TAG_MAC0:
        raise ValueError("bad-cose-structure")
    a = m.value
    if not isinstance(a, list) or len(a) != 4:
        raise ValueError("bad-cose-structure")
    prot, unprot, payload, tag = a
    if not (isinstance(prot, bytes) and isinstance(payload, bytes) and isinstance(tag, bytes)):
        raise ValueError("bad-cose-structure")
    if not isinstance(unprot, dict):
        raise ValueError("bad-cose-structure")
    if unprot:
        raise ValueError("unprotected-header")
    h = cbor.decode(prot, 1, 2, 64)
    if not isinstance(h, dict) or len(h) != 2 or 1 not in h or 4 not in h:
        raise ValueError("bad-protected-header")
    if h[1] != _ALG:
        raise ValueError("wrong-alg")
    k = h[4]
    if not isinstance(k, bytes) or not 1 <= len(k) <= _MAX_KID:
        raise ValueError("bad-kid")
    if isinstance(kid, str):
        kid = kid.encode()
    if kid is not None and k != kid:
        raise ValueError("kid-mismatch")
    if key is None:
        raise ValueError("unknown-device")
    if len(tag) != 32:
        raise ValueError("bad-mac")
    hb = _heads
    p1 = cbor.put_head(hb, 0, 2, len(prot))
    p2 = cbor.put_head(hb, p1, 2, len(payload))
    mv = memoryview(hb)
    if not equal(hmac_sha256(key, _MAC0, mv[0:p1], prot, _EMPTY, mv[p1:p2], payload), tag):
        raise ValueError("bad-mac")
    return payload
