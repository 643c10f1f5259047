"""protocol/cbor.py, the strict decoder every untrusted byte goes through, against RFC 8949.

Appendix A: the encode/decode examples the profile allows (integers, strings, arrays, maps, false, true,
null) decode to the value and re-encode to the same bytes; the ones it does not allow (floats, undefined,
simple values, tags, indefinite lengths) are refused with a reason. Appendix F: every not-well-formed
example is refused, with the reason. Then the limits.
"""

from __future__ import annotations

from typing import Any

import pytest

from countersign.protocol import cbor
from countersign.protocol.errors import DecodeError, LimitError

LOOSE = {"max_size": 1 << 20, "max_depth": 16, "max_items": 1 << 16}


def loads(data: bytes, **kw: Any) -> Any:
    return cbor.loads(data, **{**LOOSE, **kw})


# RFC 8949 Appendix A, the examples inside the profile: (diagnostic value, encoded hex).
ALLOWED: list[tuple[Any, str]] = [
    (0, "00"), (1, "01"), (10, "0a"), (23, "17"), (24, "1818"), (25, "1819"), (100, "1864"),
    (1000, "1903e8"), (1000000, "1a000f4240"), (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"), (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"), (-10, "29"), (-100, "3863"), (-1000, "3903e7"),
    (False, "f4"), (True, "f5"), (None, "f6"),
    (b"", "40"), (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"), ("a", "6161"), ("IETF", "6449455446"), ('"\\', "62225c"), ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"), ("\U00010151", "64f0908591"),
    ([], "80"), ([1, 2, 3], "83010203"), ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"), ({1: 2, 3: 4}, "a201020304"), ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    ({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}, "a56161614161626142616361436164614461656145"),
]


@pytest.mark.parametrize(("value", "hexed"), ALLOWED, ids=[h for _, h in ALLOWED])
def test_appendix_a_allowed(value: Any, hexed: str) -> None:
    data = bytes.fromhex(hexed)
    got = loads(data)
    assert got == value and type(got) is type(value)
    assert cbor.dumps(value) == data


# RFC 8949 Appendix A examples outside the profile: (encoded hex, reason).
REFUSED = [
    ("c249010000000000000000", "unexpected-tag"),        # 18446744073709551616 (bignum)
    ("c349010000000000000000", "unexpected-tag"),        # -18446744073709551617
    ("f90000", "unexpected-type"), ("f98000", "unexpected-type"), ("f93c00", "unexpected-type"),
    ("fb3ff199999999999a", "unexpected-type"), ("f97c00", "unexpected-type"), ("f97e00", "unexpected-type"),
    ("fa47c35000", "unexpected-type"), ("fb7e37e43c8800759c", "unexpected-type"),
    ("f7", "unexpected-type"),                            # undefined
    ("f0", "unexpected-type"), ("f8ff", "unexpected-type"),   # simple(16), simple(255)
    ("c074323031332d30332d32315432303a30343a30305a", "unexpected-tag"),
    ("c11a514b67b0", "unexpected-tag"), ("d74401020304", "unexpected-tag"),
    ("d818456449455446", "unexpected-tag"),
    ("d82076687474703a2f2f7777772e6578616d706c652e636f6d", "unexpected-tag"),
    ("5f42010243030405ff", "indefinite-length"), ("7f657374726561646d696e67ff", "indefinite-length"),
    ("9fff", "indefinite-length"), ("9f018202039f0405ffff", "indefinite-length"),
    ("83018202039f0405ff", "indefinite-length"), ("bf61610161629f0203ffff", "indefinite-length"),
    ("bf6346756ef563416d7421ff", "indefinite-length"),
]


@pytest.mark.parametrize(("hexed", "reason"), REFUSED, ids=[h for h, _ in REFUSED])
def test_appendix_a_outside_the_profile(hexed: str, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        loads(bytes.fromhex(hexed))
    assert info.value.reason == reason


# RFC 8949 Appendix F.1: not-well-formed examples, grouped as the RFC groups them, with our reason.
NOT_WELL_FORMED: dict[str, tuple[list[str], str]] = {
    "end of input in a head": (
        ["18", "19", "1a", "1b", "1901", "1a0102", "1b01020304050607", "38", "58", "78", "98", "9a01ff00",
         "b8", "d8", "f8", "f900", "fa0000", "fb00000000000000"], "truncated"),
    "definite-length strings with short data": (
        ["41", "61", "5affffffff00", "5bffffffffffffffff010203", "7affffffff00", "7b7fffffffffffffff010203"],
        "truncated"),
    "definite-length maps and arrays not closed with enough items": (
        ["81", "818181818181818181", "8200", "a1", "a20102", "a100", "a2000000"], "truncated"),
    "tag number not followed by tag content": (["c0"], "unexpected-tag"),
    "indefinite-length strings not closed by a break": (
        ["5f4100", "7f6100", "9f", "9f0102", "bf", "bf01020102", "819f", "9f8000", "9f9f9f9f9fffffffff",
         "9f819f819f9fffffff"], "indefinite-length"),
    "reserved additional information values": (
        ["1c", "1d", "1e", "3c", "3d", "3e", "5c", "5d", "5e", "7c", "7d", "7e", "9c", "9d", "9e", "bc", "bd",
         "be", "dc", "dd", "de", "fc", "fd", "fe"], "malformed-cbor"),
    "reserved two-byte encodings of simple values": (["f800", "f801", "f818", "f81f"], "unexpected-type"),
    "indefinite-length string chunks not of the correct type": (
        ["5f00ff", "5f21ff", "5f6100ff", "5f80ff", "5fa0ff", "5fc000ff", "5fe0ff", "7f4100ff"],
        "indefinite-length"),
    "indefinite-length string chunks not definite length": (["5f5f4100ffff", "7f7f6100ffff"],
                                                             "indefinite-length"),
    "break occurring on its own outside of an indefinite-length item": (["ff"], "indefinite-length"),
    "break occurring in a definite-length array or map or a tag": (
        ["81ff", "8200ff", "a1ff", "a1ff00", "a100ff", "a20000ff", "9f81ff", "9f829f819f9fffffffff"],
        "indefinite-length"),
    "break in an indefinite-length map in a value position": (["bf00ff", "bf000000ff"], "indefinite-length"),
    "major type 0, 1, 6 with additional information 31": (["1f", "3f", "df"], "indefinite-length"),
}
F_CASES = [(group, h, reason) for group, (hexes, reason) in NOT_WELL_FORMED.items() for h in hexes]


@pytest.mark.parametrize(("group", "hexed", "reason"), F_CASES, ids=[f"{h}" for _, h, _ in F_CASES])
def test_appendix_f_not_well_formed(group: str, hexed: str, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        loads(bytes.fromhex(hexed))
    assert info.value.reason == reason, group


def test_profile_encoding_rules() -> None:
    cases = {
        "1817": "non-deterministic",            # 23 with a 1-byte argument
        "190017": "non-deterministic",
        "1a0000ffff": "non-deterministic",
        "5801ff": "non-deterministic",          # byte string length in a longer head than needed
        "a203040102": "non-deterministic",      # map keys out of order
        "a2616201616102": "non-deterministic",
        "a201020103": "duplicate-key",
        "a2616101616102": "duplicate-key",
        "62c328": "malformed-cbor",             # invalid UTF-8
        "62c080": "malformed-cbor",             # overlong NUL
        "63eda080": "malformed-cbor",           # a surrogate (U+D800)
        "64f4908080": "malformed-cbor",         # above U+10FFFF
        "0000": "trailing-bytes",
    }
    for hexed, reason in cases.items():
        with pytest.raises(DecodeError) as info:
            loads(bytes.fromhex(hexed))
        assert info.value.reason == reason, hexed


def test_allowed_outer_tag_only() -> None:
    item = loads(bytes.fromhex("d18100"), allowed_tags=(17,))
    assert isinstance(item, cbor.Tag) and item.tag == 17 and list(item.value) == [0]
    with pytest.raises(DecodeError) as info:
        loads(bytes.fromhex("d181d100"), allowed_tags=(17,))      # a nested tag 17 is not allowed
    assert info.value.reason == "unexpected-tag"
    with pytest.raises(DecodeError):
        loads(bytes.fromhex("d28100"), allowed_tags=(17,))


def test_depth_limit() -> None:
    def nested(n: int) -> bytes:
        return b"\x81" * n + b"\x00"
    assert loads(nested(4), max_depth=4) is not None
    with pytest.raises(LimitError) as info:
        loads(nested(5), max_depth=4)
    assert info.value.reason == "too-deep"
    with pytest.raises(LimitError):
        loads(b"\xa1\x01" * 5 + b"\x00", max_depth=4)          # maps count too


def test_item_count_limit() -> None:
    assert loads(cbor.dumps(list(range(64))), max_items=64) == list(range(64))
    for value in (list(range(65)), {i: 0 for i in range(65)}):
        with pytest.raises(LimitError) as info:
            loads(cbor.dumps(value), max_items=64)
        assert info.value.reason == "over-limit"
    # The count is read from the head: a claimed 2^32-item array is refused before anything is read.
    with pytest.raises(LimitError):
        loads(bytes.fromhex("9affffffff"), max_items=64)


def test_size_limit() -> None:
    data = cbor.dumps(b"x" * 300)
    assert loads(data, max_size=len(data)) == b"x" * 300
    with pytest.raises(LimitError) as info:
        loads(data, max_size=len(data) - 1)
    assert info.value.reason == "oversized"


def test_text_length_limit() -> None:
    assert loads(cbor.dumps("水" * 21), max_text=64) == "水" * 21          # 63 bytes
    with pytest.raises(LimitError) as info:
        loads(cbor.dumps("水" * 22), max_text=64)                          # 66 bytes: bytes, not chars
    assert info.value.reason == "over-limit"
    assert loads(cbor.dumps(b"x" * 100), max_text=64) == b"x" * 100       # byte strings are not text


def test_not_bytes() -> None:
    with pytest.raises(DecodeError):
        cbor.loads("a0", **LOOSE)  # type: ignore[arg-type]


def test_dumps_is_deterministic() -> None:
    # Length-first order (RFC 8949 4.2.3, PROTOCOL.md section 4): -1 (20) before 24 (18 18), which the
    # bytewise order of 4.2.1 would put the other way round. The profile's keys are 0..26, where the two
    # orders agree.
    m = {24: 4, 10: 1, 2: 2, 0: 0, -1: 5}
    assert cbor.dumps(m) == bytes.fromhex("a5" "0000" "0202" "0a01" "2005" "181804")
    assert cbor.dumps(m) == cbor.dumps(dict(reversed(list(m.items()))))
    assert loads(cbor.dumps(m)) == m
    assert cbor.dumps({"": 1, 24: 2}) == bytes.fromhex("a2" "6001" "181802")
    assert cbor.dumps({i: 0 for i in range(27)}) == bytes.fromhex(
        "b81b" + "".join(cbor.dumps(i).hex() + "00" for i in range(27)))


def test_length_first_key_order_is_the_rule() -> None:
    # The bytewise (RFC 8949 4.2.1) order of the same maps is refused: one encoding per value.
    for hexed in ("a5" "0000" "0202" "0a01" "181804" "2005", "a2" "181802" "6001"):
        with pytest.raises(DecodeError) as info:
            loads(bytes.fromhex(hexed))
        assert info.value.reason == "non-deterministic", hexed
    assert loads(bytes.fromhex("a2" "6001" "181802")) == {24: 2, "": 1}
    # a duplicate anywhere in the map (not only next to its twin) is a duplicate, reported before order
    with pytest.raises(DecodeError) as info:
        loads(bytes.fromhex("a3" "0100" "0200" "0100"))
    assert info.value.reason == "duplicate-key"


@pytest.mark.parametrize("hexed", ["a1f500", "a1f400", "a2f4000101", "a20443616263f505", "81a1f501",
                                   "a101a1f400"])
def test_false_true_are_not_map_keys(hexed: str) -> None:
    # Decoded they would be 0 and 1 (True == 1 in Python): {4: kid, true: 5} would read as alg 5.
    with pytest.raises(DecodeError) as info:
        loads(bytes.fromhex(hexed))
    assert info.value.reason == "unexpected-type"
    assert loads(bytes.fromhex("a101f5")) == {1: True}      # as values they are fine
