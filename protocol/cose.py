"""The project's COSE profile (RFC 9052/9053), strict on input.

Device <-> gateway: COSE_Mac0 (tag 17), HMAC 256/256 (alg 5). Gateway <-> province: COSE_Sign1 (tag 18),
EdDSA with Ed25519 (alg -8). In both, the protected header is exactly ``{1: alg, 4: kid}``, the
unprotected header is an empty map and external_aad is empty. Anything else is refused: the algorithm is
pinned, never read from the message, so a downgrade (alg 4) or an alg in the unprotected header fails.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import cbor, limits
from .errors import CoseError, ProtocolError, UnknownKeyError, VerifyError

TAG_MAC0 = 17
TAG_SIGN1 = 18
ALG_HMAC_256_256 = 5
ALG_EDDSA = -8
HDR_ALG = 1
HDR_KID = 4
KEY_LEN = 32


@dataclass(frozen=True)
class Verified:
    kid: bytes
    payload: bytes          # the CBOR payload bytes, exactly as MACed or signed
    protected: bytes


def protected_header(alg: int, kid: bytes) -> bytes:
    return cbor.dumps({HDR_ALG: alg, HDR_KID: kid})


def mac_structure(protected: bytes, payload: bytes) -> bytes:
    """ToMac bytes: ["MAC0", protected, external_aad = h'', payload]."""
    return cbor.dumps(["MAC0", protected, b"", payload])


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """ToBeSigned bytes: ["Signature1", protected, external_aad = h'', payload]."""
    return cbor.dumps(["Signature1", protected, b"", payload])


def mac0_tag(key: bytes, protected: bytes, payload: bytes) -> bytes:
    return hmac.new(key, mac_structure(protected, payload), hashlib.sha256).digest()


def mac0_encode(key: bytes, kid: bytes, payload: bytes) -> bytes:
    if len(key) != KEY_LEN:
        raise ValueError(f"device keys are {KEY_LEN} bytes, got {len(key)}")
    protected = protected_header(ALG_HMAC_256_256, kid)
    tag = mac0_tag(key, protected, payload)
    return cbor.dumps(cbor.Tag(TAG_MAC0, [protected, {}, payload, tag]))


def _split(data: bytes, tag_number: int, alg: int, *, max_size: int, max_depth: int,
           max_items: int) -> tuple[bytes, bytes, bytes, bytes]:
    """Check the envelope's shape; return (protected bytes, kid, payload, tag/signature)."""
    item = cbor.loads(data, max_size=max_size, max_depth=max_depth, max_items=max_items,
                      allowed_tags=(tag_number,))
    if not isinstance(item, cbor.Tag) or item.tag != tag_number:
        raise CoseError(f"not a tagged COSE message (tag {tag_number} expected)", "bad-cose-structure")
    arr = item.value
    # cbor2 6 decodes a tag's content as immutable (tuple, frozendict); older versions as list, dict.
    if not isinstance(arr, list | tuple) or len(arr) != 4:
        raise CoseError("COSE message must be an array of 4", "bad-cose-structure")
    protected, unprotected, payload, tag = arr
    if not isinstance(protected, bytes) or not isinstance(payload, bytes) or not isinstance(tag, bytes):
        raise CoseError("protected, payload and tag must be byte strings", "bad-cose-structure")
    if not isinstance(unprotected, Mapping):
        raise CoseError("unprotected header must be a map", "bad-cose-structure")
    if unprotected:
        raise CoseError("the profile allows no unprotected header parameters", "unprotected-header")
    hdr = cbor.loads(protected, max_size=64, max_depth=1, max_items=2)
    if not isinstance(hdr, dict) or set(hdr) != {HDR_ALG, HDR_KID}:
        raise CoseError("protected header must be exactly {1: alg, 4: kid}", "bad-protected-header")
    if hdr[HDR_ALG] != alg:
        raise CoseError(f"algorithm {hdr[HDR_ALG]!r} is not allowed (only {alg})", "wrong-alg")
    kid = hdr[HDR_KID]
    if not isinstance(kid, bytes) or not 1 <= len(kid) <= limits.MAX_KID:
        raise CoseError("kid must be a byte string of 1 to 16 bytes", "bad-kid")
    return protected, kid, payload, tag


def mac0_verify(data: bytes, key_for: Callable[[bytes], bytes | None], *,
                expected_kid: bytes | None = None) -> Verified:
    """Verify a device-profile COSE_Mac0. ``key_for(kid)`` returns the 32-byte key or None."""
    protected, kid, payload, tag = _split(
        data, TAG_MAC0, ALG_HMAC_256_256, max_size=limits.MAX_DEVICE_MESSAGE,
        max_depth=limits.MAX_DEPTH, max_items=limits.MAX_ITEMS)
    if expected_kid is not None and kid != expected_kid:
        raise VerifyError(f"kid {kid!r} does not match {expected_kid!r}", "kid-mismatch")
    key = key_for(kid)
    if key is None:
        raise UnknownKeyError(f"no key registered for kid {kid!r}", "unknown-device")
    if len(tag) != 32:
        raise VerifyError("HMAC 256/256 tag must be 32 bytes", "bad-mac")
    if not hmac.compare_digest(mac0_tag(key, protected, payload), tag):
        raise VerifyError("MAC does not verify", "bad-mac")
    return Verified(kid, payload, protected)


def sign1_encode(private_key: Ed25519PrivateKey, kid: bytes, payload: bytes) -> bytes:
    protected = protected_header(ALG_EDDSA, kid)
    sig = private_key.sign(sig_structure(protected, payload))
    return cbor.dumps(cbor.Tag(TAG_SIGN1, [protected, {}, payload, sig]))


def sign1_verify(data: bytes, public_key_for: Callable[[bytes], Ed25519PublicKey | None], *,
                 expected_kid: bytes | None = None, max_size: int = limits.MAX_BATCH_MESSAGE) -> Verified:
    """Verify a COSE_Sign1 envelope only (the payload is decoded by the caller with its own limits)."""
    # The envelope itself is shallow; the payload bytes inside are not walked here.
    protected, kid, payload, sig = _split(data, TAG_SIGN1, ALG_EDDSA, max_size=max_size, max_depth=2,
                                          max_items=4)
    if expected_kid is not None and kid != expected_kid:
        raise VerifyError(f"kid {kid!r} does not match {expected_kid!r}", "kid-mismatch")
    pub = public_key_for(kid)
    if pub is None:
        raise UnknownKeyError(f"no public key registered for kid {kid!r}", "unknown-signer")
    try:
        pub.verify(sig, sig_structure(protected, payload))
    except InvalidSignature as exc:
        raise VerifyError("signature does not verify", "bad-signature") from exc
    return Verified(kid, payload, protected)


def read_kid(data: bytes) -> bytes:
    """The kid of a Mac0 or Sign1 message without verifying anything, or a ProtocolError (the verdict):
    the message must be tag 17 or 18 over an array whose first item is a protected header map with a
    bstr kid. Only the shape needed to find the kid is checked; the verifiers check the rest."""
    item = cbor.loads(data, max_size=limits.MAX_BATCH_MESSAGE, max_depth=2, max_items=4,
                      allowed_tags=(TAG_MAC0, TAG_SIGN1))
    if not isinstance(item, cbor.Tag):
        raise CoseError("not a tagged COSE message", "bad-cose-structure")
    # A tag over a map (d2 a0) or over an empty array has no protected header to read.
    arr = item.value
    if not isinstance(arr, list | tuple) or not arr or not isinstance(arr[0], bytes):
        raise CoseError("COSE message must be an array starting with the protected bstr",
                        "bad-cose-structure")
    hdr = cbor.loads(arr[0], max_size=64, max_depth=1, max_items=2)
    kid = hdr.get(HDR_KID) if isinstance(hdr, Mapping) else None
    if not isinstance(kid, bytes):
        raise CoseError("protected header has no bstr kid", "bad-protected-header")
    return kid


def peek_kid(data: bytes) -> bytes | None:
    """``read_kid``, or None when the message has no readable kid (for logs and `decode`). Never raises
    on any input: the province calls it on every batch entry before its own error handling."""
    try:
        return read_kid(data)
    except ProtocolError:
        return None
