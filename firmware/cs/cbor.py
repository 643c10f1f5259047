# Minimal CBOR (RFC 8949) for the keypad: a deterministic encoder that writes into a caller's
# preallocated bytearray, and a strict, bounded decoder for untrusted downlink input.
# The rules are PROTOCOL.md section 4; reason strings are those of section 12.
from micropython import const
import struct

_BSTR = const(2)
_TSTR = const(3)
_ARRAY = const(4)
_MAP = const(5)
_TAG = const(6)
_SIMPLE = const(7)


class Tag:
    def __init__(self, tag, value):
        self.tag = tag
        self.value = value


# ---- encoder: every put_* writes at buf[pos] and returns the position after what it wrote.
# Heads are always the shortest form (deterministic encoding). Multi-byte arguments go through
# struct.pack_into, which reads a big integer in place: shifting and masking a u32 such as a unix time
# would allocate a long int on a 32-bit port, pack_into does not.

def put_head(buf, pos, major, n):
    mt = major << 5
    if n < 0:
        raise ValueError("bad-field")
    if n < 24:
        buf[pos] = mt | n
        return pos + 1
    if n < 0x100:
        buf[pos] = mt | 24
        buf[pos + 1] = n
        return pos + 2
    if n < 0x10000:
        struct.pack_into(">BH", buf, pos, mt | 25, n)
        return pos + 3
    if n < 0x100000000:
        struct.pack_into(">BI", buf, pos, mt | 26, n)
        return pos + 5
    if n < 0x10000000000000000:
        struct.pack_into(">BQ", buf, pos, mt | 27, n)
        return pos + 9
    raise ValueError("bad-field")


def put_uint(buf, pos, n):
    return put_head(buf, pos, 0, n)


def put_int(buf, pos, n):
    if n >= 0:
        return put_head(buf, pos, 0, n)
    return put_head(buf, pos, 1, -1 - n)


def put_bytes(buf, pos, data, major=_BSTR):
    n = len(data)
    pos = put_head(buf, pos, major, n)
    end = pos + n
    # A slice assignment past the end would silently grow the bytearray: refuse instead.
    if end > len(buf):
        raise ValueError("oversized")
    buf[pos:end] = data
    return end


def put_text(buf, pos, s):
    # s may be given as UTF-8 bytes already (no allocation); a str is encoded here.
    if isinstance(s, str):
        s = s.encode()
    return put_bytes(buf, pos, s, _TSTR)


def put_null(buf, pos):
    buf[pos] = 0xF6
    return pos + 1


def put_bool(buf, pos, v):
    buf[pos] = 0xF5 if v else 0xF4
    return pos + 1


# ---- strict decoder. Errors are found in input order, like the CPython walk; duplicate keys and
# keys out of order are remembered and raised only once the whole item is known well-formed, because
# the CPython reference reports those after every well-formedness error (and duplicates first).

_DUP = const(1)
_ORDER = const(2)
_CKEY = object()    # marks the stand-in for an array or map used as a map key


def _head(d, s, n):
    # Reads the head at s[0]: returns its argument, leaves the major type in s[1] and the additional
    # info in s[2], moves s[0] past it. (State in one list, not returned tuples: less garbage per item.)
    pos = s[0]
    if pos >= n:
        raise ValueError("truncated")
    ib = d[pos]
    major = ib >> 5
    ai = ib & 31
    s[1] = major
    s[2] = ai
    pos += 1
    if ai < 24:
        s[0] = pos
        return ai
    if ai < 28:
        k = 1 << (ai - 24)
        if pos + k > n:
            raise ValueError("truncated")
        arg = 0
        for i in range(pos, pos + k):
            arg = (arg << 8) | d[i]
        # A longer head than needed is a second encoding of the same value.
        if major != _SIMPLE and ((k == 1 and arg < 24) or (k > 1 and arg < (1 << (4 * k)))):
            raise ValueError("non-deterministic")
        s[0] = pos + k
        return arg
    if ai == 31:
        raise ValueError("indefinite-length")
    raise ValueError("malformed-cbor")


def _less(d, a0, a1, b0, b1):
    # Length-first key order (RFC 8949 4.2.3, the RFC 7049 canonical order; PROTOCOL.md section 4):
    # shorter encoding first, then bytewise.
    if a1 - a0 != b1 - b0:
        return a1 - a0 < b1 - b0
    while a0 < a1:
        if d[a0] != d[b0]:
            return d[a0] < d[b0]
        a0 += 1
        b0 += 1
    return False


def _utf8(d, i, end):
    # RFC 3629 well-formedness, as CPython's decoder judges it: MicroPython's str() lets overlong forms,
    # surrogates and code points over U+10FFFF through. Comparisons only: nothing is allocated.
    while i < end:
        c = d[i]
        i += 1
        if c < 0x80:
            continue
        if c < 0xC2 or c > 0xF4:
            return False
        k = 1 if c < 0xE0 else 2 if c < 0xF0 else 3
        if i + k > end:
            return False
        # the second byte's range is narrower after E0 (overlong), ED (surrogates), F0, F4 (> U+10FFFF)
        lo = 0xA0 if c == 0xE0 else 0x90 if c == 0xF0 else 0x80
        hi = 0x9F if c == 0xED else 0x8F if c == 0xF4 else 0xBF
        b = d[i]
        if b < lo or b > hi:
            return False
        for j in range(i + 1, i + k):
            if d[j] & 0xC0 != 0x80:
                return False
        i += k
    return True


def _item(d, s, n, depth, lim, tag):
    # One item at s[0]; returns its value and leaves s[0] after it. s[3] collects _DUP / _ORDER.
    arg = _head(d, s, n)
    major = s[1]
    if major == 0:
        return arg
    if major == 1:
        return -1 - arg
    if major == _BSTR or major == _TSTR:
        pos = s[0]
        end = pos + arg
        if end > n:
            raise ValueError("truncated")
        s[0] = end
        if major == _BSTR:
            return bytes(d[pos:end])
        if lim[2] is not None and arg > lim[2]:
            raise ValueError("over-limit")
        if not _utf8(d, pos, end):
            raise ValueError("malformed-cbor")
        return str(d[pos:end], "utf-8")
    if major == _ARRAY or major == _MAP:
        if depth + 1 > lim[0]:
            raise ValueError("too-deep")
        if arg > lim[1]:
            raise ValueError("over-limit")
        if major == _ARRAY:
            # Sized once (arg is bounded above): an ack's 32 seqs as one block, not the four a growing
            # list reallocates through, which a fragmented keypad heap may not have.
            arr = [None] * arg
            for i in range(arg):
                arr[i] = _item(d, s, n, depth + 1, lim, None)
            return arr
        out = {}
        p0 = p1 = -1
        for _ in range(arg):
            k0 = s[0]
            # false/true would decode to False == 0 / True == 1: {4: kid, true: 5} would read as alg 5
            if k0 < n and d[k0] | 1 == 0xF5:
                raise ValueError("unexpected-type")
            k = _item(d, s, n, depth + 1, lim, None)
            k1 = s[0]
            if type(k) is list or type(k) is dict:
                # Unhashable here; like the CPython decoder, accept it and let the layer above refuse
                # the unknown key. The stand-in equals only an identical encoding (duplicate check).
                k = (_CKEY, bytes(d[k0:k1]))
            if k in out:
                s[3] |= _DUP
            elif p0 >= 0 and not _less(d, p0, p1, k0, k1):
                s[3] |= _ORDER
            p0 = k0
            p1 = k1
            out[k] = _item(d, s, n, depth + 1, lim, None)
        return out
    if major == _TAG:
        if arg != tag:
            raise ValueError("unexpected-tag")
        return Tag(arg, _item(d, s, n, depth, lim, None))
    # major 7: only false, true, null in their one-byte form; no floats, no undefined
    if s[2] >= 24 or arg < 20 or arg > 22:
        raise ValueError("unexpected-type")
    return (False, True, None)[arg - 20]


def decode(data, max_depth=4, max_items=40, max_len=256, max_text=None, allow_tag=None):
    """Exactly one item of `data` (bytes, bytearray or memoryview), or ValueError(reason).

    max_depth counts nested arrays/maps (a top-level map is depth 1), max_items bounds each
    container, max_len the whole input, max_text each text string (bytes). allow_tag: the one tag
    number allowed, only as the outermost item.
    """
    n = len(data)
    if n > max_len:
        raise ValueError("oversized")
    s = [0, 0, 0, 0]    # position, major type, additional info, deferred faults
    v = _item(data, s, n, 0, (max_depth, max_items, max_text), allow_tag)
    if s[0] != n:
        raise ValueError("trailing-bytes")
    if s[3] & _DUP:
        raise ValueError("duplicate-key")
    if s[3]:
        raise ValueError("non-deterministic")
    return v
