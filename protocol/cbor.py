"""Strict CBOR for untrusted input, on cbor2.

cbor2 decodes generously (indefinite lengths, duplicate keys, any semantic tag). Device and gateway input
is untrusted, so ``loads`` first walks the item heads itself, refusing with a precise reason anything the
profile does not allow, and only then lets cbor2 build the value with its own strict options on top.
``dumps`` gives the deterministic encoding of RFC 8949 section 4.2.1, which is what both MACs and
signatures are computed over.
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
    end = _walk(data, 0, 0, max_depth, max_items, max_text, allowed_tags)
    if end != len(data):
        raise DecodeError(f"{len(data) - end} trailing bytes after the item", "trailing-bytes")


def _walk(
    data: bytes,
    pos: int,
    depth: int,
    max_depth: int,
    max_items: int,
    max_text: int | None,
    allowed_tags: tuple[int, ...],
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
        count = arg * 2 if major == _MAJOR_MAP else arg
        for _ in range(count):
            pos = _walk(data, pos, depth + 1, max_depth, max_items, max_text, ())
        return pos
    if major == _MAJOR_TAG:
        if arg not in allowed_tags:
            raise DecodeError(f"CBOR tag {arg} is not allowed here", "unexpected-tag")
        return _walk(data, pos, depth, max_depth, max_items, max_text, ())
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
        if "duplicate" in str(exc).lower():
            raise DecodeError("duplicate map key", "duplicate-key") from exc
        raise DecodeError(f"CBOR decode failed: {exc}", "malformed-cbor") from exc
    # cbor2 hands back map keys of any type; the profile allows only integer and text keys, and
    # deterministic key order (checked by re-encoding).
    if dumps(value) != data:
        raise DecodeError("not the deterministic encoding (map keys out of order?)", "non-deterministic")
    return value


def dumps(value: Any) -> bytes:
    """Deterministic encoding (RFC 8949 4.2.1). All profile map keys are small, so cbor2's canonical
    (length-first) order and the bytewise order of 4.2.1 agree."""
    return cbor2.dumps(value, canonical=True)


Tag = cbor2.CBORTag
