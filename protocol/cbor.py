"""Strict CBOR for untrusted input, on cbor2.

cbor2 decodes generously (indefinite lengths, duplicate keys, any semantic tag). Device and gateway input
is untrusted, so ``loads`` first walks the item heads itself, refusing with a precise reason anything the
profile does not allow (including map keys out of order and duplicates, judged on their encoded bytes),
and only then lets cbor2 build the value with its own strict options on top. ``dumps`` gives the
length-first deterministic encoding of RFC 8949 section 4.2.3 (the core rules of 4.2.1 with map keys
sorted shorter encoding first, then bytewise: RFC 7049's canonical order, cbor2's ``canonical=True``),
which is what both MACs and signatures are computed over; PROTOCOL.md section 4 says why that order.
"""

from __future__ import annotations

from typing import Any

import cbor2

from .errors import DecodeError, LimitError

_MAJOR_UINT = 0
_MAJOR_NINT = 1
_MAJOR_BSTR = 2
_MAJOR_TSTR = 3
_MAJOR_ARRAY = 4
_MAJOR_MAP = 5
_MAJOR_TAG = 6
_MAJOR_SIMPLE = 7

_SIMPLE_ALLOWED = (20, 21, 22)  # false, true, null; no undefined, no floats, no other simple values
# false and true as map keys: decoded, they are Python's False == 0 and True == 1 (on MicroPython too),
# so {4: kid, true: 5} would read as alg 5. Refused at the CBOR layer, where the encoding still shows them.
_BOOL_KEYS = (0xF4, 0xF5)
_DUP = 1        # deferred faults of a walk: reported only once the whole item is well-formed
_ORDER = 2


def _head(data: bytes, pos: int) -> tuple[int, int, int, int]:
    """Return (major type, additional info, argument, position after the head)."""
    if pos >= len(data):
        raise DecodeError("truncated: input ends inside an item", "truncated")
    ib = data[pos]
    major, ai = ib >> 5, ib & 0x1F
    pos += 1
    if ai < 24:
        return major, ai, ai, pos
    if ai in (24, 25, 26, 27):
        n = 1 << (ai - 24)
        if pos + n > len(data):
            raise DecodeError("truncated: input ends inside an item head", "truncated")
        arg = int.from_bytes(data[pos : pos + n], "big")
        # Shortest form only: a longer head than needed is a second encoding of the same value.
        if major != _MAJOR_SIMPLE and ((ai == 24 and arg < 24) or (ai > 24 and arg < (1 << (8 * (n >> 1))))):
            raise DecodeError("non-shortest integer or length encoding", "non-deterministic")
        return major, ai, arg, pos + n
    if ai == 31:
        raise DecodeError("indefinite-length item (or break) is not allowed", "indefinite-length")
    raise DecodeError(f"reserved additional information value {ai}", "malformed-cbor")


def check_well_formed(
    data: bytes,
    *,
    max_size: int,
    max_depth: int,
    max_items: int,
    max_text: int | None = None,
    allowed_tags: tuple[int, ...] = (),
) -> None:
    """Walk ``data`` as exactly one CBOR item within the limits, or raise DecodeError with a reason.

    ``allowed_tags`` may appear only as the outermost item; the profile has no nested tags.
    """
    if len(data) > max_size:
        raise LimitError(f"message is {len(data)} bytes, limit {max_size}", "oversized")
    faults = [0]
    end = _walk(data, 0, 0, max_depth, max_items, max_text, allowed_tags, faults)
    if end != len(data):
        raise DecodeError(f"{len(data) - end} trailing bytes after the item", "trailing-bytes")
    # Key faults come after every well-formedness fault, duplicates first (the firmware's order too).
    if faults[0] & _DUP:
        raise DecodeError("duplicate map key", "duplicate-key")
    if faults[0] & _ORDER:
        raise DecodeError("not the deterministic encoding (map keys out of length-first order)",
                          "non-deterministic")


def _walk(
    data: bytes,
    pos: int,
    depth: int,
    max_depth: int,
    max_items: int,
    max_text: int | None,
    allowed_tags: tuple[int, ...],
    faults: list[int],
) -> int:
    major, _ai, arg, pos = _head(data, pos)
    if major in (_MAJOR_UINT, _MAJOR_NINT):
        return pos
    if major in (_MAJOR_BSTR, _MAJOR_TSTR):
        if pos + arg > len(data):
            raise DecodeError("truncated: string runs past the end of input", "truncated")
        if major == _MAJOR_TSTR:
            if max_text is not None and arg > max_text:
                raise LimitError(f"text string of {arg} bytes, limit {max_text}", "over-limit")
            try:
                data[pos : pos + arg].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DecodeError("text string is not valid UTF-8", "malformed-cbor") from exc
        return pos + arg
    if major in (_MAJOR_ARRAY, _MAJOR_MAP):
        if depth + 1 > max_depth:
            raise LimitError(f"nesting deeper than {max_depth}", "too-deep")
        if arg > max_items:
            raise LimitError(f"container of {arg} items, limit {max_items}", "over-limit")
        if major == _MAJOR_ARRAY:
            for _ in range(arg):
                pos = _walk(data, pos, depth + 1, max_depth, max_items, max_text, (), faults)
            return pos
        prev = b""
        seen: set[bytes] = set()
        for i in range(arg):
            if pos < len(data) and data[pos] in _BOOL_KEYS:
                raise DecodeError("false/true as a map key (it would read as 0/1)", "unexpected-type")
            k0 = pos
            pos = _walk(data, pos, depth + 1, max_depth, max_items, max_text, (), faults)
            key = data[k0:pos]
            # Every item passed the walk (shortest heads), so equal values have equal encodings.
            if key in seen:
                faults[0] |= _DUP
            elif i and (len(key), key) < (len(prev), prev):
                faults[0] |= _ORDER
            seen.add(key)
            prev = key
            pos = _walk(data, pos, depth + 1, max_depth, max_items, max_text, (), faults)
        return pos
    if major == _MAJOR_TAG:
        if arg not in allowed_tags:
            raise DecodeError(f"CBOR tag {arg} is not allowed here", "unexpected-tag")
        return _walk(data, pos, depth, max_depth, max_items, max_text, (), faults)
    # major 7
    if arg not in _SIMPLE_ALLOWED or _ai >= 24:
        raise DecodeError("floats and simple values other than false/true/null are not allowed",
                          "unexpected-type")
    return pos


def loads(
    data: bytes,
    *,
    max_size: int,
    max_depth: int,
    max_items: int,
    max_text: int | None = None,
    allowed_tags: tuple[int, ...] = (),
) -> Any:
    """Decode one untrusted CBOR item strictly (see module docstring)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("input must be bytes", "malformed-cbor")
    data = bytes(data)
    check_well_formed(data, max_size=max_size, max_depth=max_depth, max_items=max_items,
                      max_text=max_text, allowed_tags=allowed_tags)
    try:
        value = cbor2.loads(data, allow_indefinite=False, allow_duplicate_keys=False,
                            max_depth=max_depth + 1)
    except cbor2.CBORDecodeError as exc:
        raise DecodeError(f"CBOR decode failed: {exc}", "malformed-cbor") from exc
    return value


def dumps(value: Any) -> bytes:
    """Deterministic encoding, length-first key order (RFC 8949 4.2.3; see the module docstring)."""
    return cbor2.dumps(value, canonical=True)

Tag = cbor2.CBORTag
