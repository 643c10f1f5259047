# Unit checks of cs.cbor and cs.cose on MicroPython: encoder boundaries, decoder limits and reasons,
# HMAC-SHA256 against RFC 4231, COSE seal/open. The message layer (cs.msgs) is mp_msgs.py: apart, each
# script also runs in a 64 KB heap of a 64-bit port (test_61).
import mpyboot
from mpyboot import check, raises, done, h, x, reason_of
import gc

from cs import cbor, cose, msgs
import upmsgs as M

buf = bytearray(300)
out = bytearray(256)
KEY = bytes(range(32))
KID = b"hf01-w01"


# ---- encoder: shortest heads at every boundary
def encoder():
    UINTS = ((0, "00"), (23, "17"), (24, "1818"), (255, "18ff"), (256, "190100"), (65535, "19ffff"),
             (65536, "1a00010000"), (2**32 - 1, "1affffffff"), (2**32, "1b0000000100000000"),
             (2**64 - 1, "1bffffffffffffffff"))
    for n, want in UINTS:
        p = cbor.put_uint(buf, 0, n)
        check(h(buf[:p]) == want, "put_uint %d" % n, h(buf[:p]))
        check(cbor.decode(buf[:p], max_len=16) == n, "decode uint %d" % n)
    for n, want in ((-1, "20"), (-24, "37"), (-25, "3818"), (-256, "38ff"), (-257, "390100"),
                    (-65537, "3a00010000"), (-2**32, "3affffffff"), (7, "07")):
        p = cbor.put_int(buf, 0, n)
        check(h(buf[:p]) == want, "put_int %d" % n, h(buf[:p]))
        check(cbor.decode(buf[:p]) == n, "decode int %d" % n)
    check(raises(lambda: cbor.put_uint(buf, 0, -1), "bad-field"), "put_uint refuses negative")
    check(raises(lambda: cbor.put_uint(buf, 0, 2**64), "bad-field"), "put_uint refuses 2^64")
    for n, head in ((0, "40"), (23, "57"), (24, "5818"), (255, "58ff"), (256, "590100")):
        p = cbor.put_bytes(buf, 0, b"\xab" * n)
        check(h(buf[:p]) == head + "ab" * n, "put_bytes length %d" % n)
        check(cbor.decode(buf[:p], max_len=300) == b"\xab" * n, "decode bytes length %d" % n)
    p = cbor.put_head(buf, 0, 2, 65536)
    check(h(buf[:p]) == "5a00010000", "byte string head for length 65536")
    p = cbor.put_text(buf, 0, "张三")
    check(h(buf[:p]) == "66e5bca0e4b889", "put_text utf-8 bytes, not characters")
    p = cbor.put_text(buf, 0, b"cs-fw")
    check(h(buf[:p]) == "6563732d6677", "put_text from bytes")
    check(cbor.put_null(buf, 0) == 1 and buf[0] == 0xF6, "put_null")
    check(cbor.put_bool(buf, 0, True) == 1 and buf[0] == 0xF5, "put_bool true")
    check(cbor.put_bool(buf, 0, False) == 1 and buf[0] == 0xF4, "put_bool false")
    p = cbor.put_head(buf, 0, 6, 17)
    check(h(buf[:p]) == "d1", "put_head tag 17")
    small = bytearray(8)
    check(raises(lambda: cbor.put_bytes(small, 2, b"123456789"), "oversized") and len(small) == 8,
          "put_bytes past the buffer refuses (and does not grow it)")


# ---- decoder: values and strictness (reasons of PROTOCOL.md section 12)
def decoder():
    check(cbor.decode(x("a3 00 10 01 01 0a 83 18 2a 18 2b 18 2c")) == {0: 16, 1: 1, 10: [42, 43, 44]},
          "decode ack map")
    check(cbor.decode(x("83 f4 f5 f6")) == [False, True, None], "decode false true null")
    check(cbor.decode(x("a2 20 00 18 18 00")) == {-1: 0, 24: 0}, "key order: shorter encoding first")
    check(cbor.decode(x("a2 01 00 61 61 00")) == {1: 0, "a": 0}, "text key accepted (refused by field)")
    t = cbor.decode(x("d1 80"), allow_tag=17)
    check(isinstance(t, cbor.Tag) and t.tag == 17 and t.value == [], "outer tag allowed")
    BAD = (
        ("", "truncated"), ("18", "truncated"), ("19 01", "truncated"), ("62 61", "truncated"),
        ("82 01", "truncated"), ("a1 01", "truncated"),
        ("01 00", "trailing-bytes"),
        ("9f ff", "indefinite-length"), ("5f 41 00 ff", "indefinite-length"), ("bf ff", "indefinite-length"),
        ("ff", "indefinite-length"), ("1f", "indefinite-length"),
        ("18 17", "non-deterministic"), ("19 00 ff", "non-deterministic"),
        ("1a 00 00 ff ff", "non-deterministic"), ("1b 00 00 00 00 ff ff ff ff", "non-deterministic"),
        ("58 01 00", "non-deterministic"), ("98 01 00", "non-deterministic"),
        ("a2 02 00 01 00", "non-deterministic"), ("a2 18 18 00 20 00", "non-deterministic"),
        ("a2 01 00 01 00", "duplicate-key"), ("a3 02 00 01 00 02 00", "duplicate-key"),
        ("f9 3c 00", "unexpected-type"), ("fb 00 00 00 00 00 00 00 00", "unexpected-type"),
        ("f7", "unexpected-type"), ("f8 20", "unexpected-type"), ("f8 14", "unexpected-type"),
        ("e0", "unexpected-type"), ("a2 81 01 00 81 01 00", "duplicate-key"),
        ("1c", "malformed-cbor"), ("3e", "malformed-cbor"), ("62 c3 28", "malformed-cbor"),
        ("c1 00", "unexpected-tag"), ("d2 80", "unexpected-tag"), ("81 d1 80", "unexpected-tag"),
        ("d1 d1 80", "unexpected-tag"),
    )
    for s, want in BAD:
        r = reason_of(lambda: cbor.decode(x(s), allow_tag=17))
        check(r == want, "decode %s: %s" % (s, want), "got %r" % r)
    # limits: depth, items, length, text
    nest = x("81" * 4 + "00")
    check(cbor.decode(nest, max_depth=4) == [[[[0]]]], "depth 4 at max_depth 4")
    check(raises(lambda: cbor.decode(x("81" * 5 + "00"), max_depth=4), "too-deep"), "depth 5: too-deep")
    check(raises(lambda: cbor.decode(x("a1 00 81 00"), max_depth=1), "too-deep"), "map > array at depth 1")
    check(raises(lambda: cbor.decode(x("81" * 200 + "00"), max_len=256), "too-deep"),
          "200 nested arrays: too-deep (no recursion blow-up)")
    arr = x("98 28" + "00" * 40)
    check(len(cbor.decode(arr, max_items=40)) == 40, "40 items at max_items 40")
    check(raises(lambda: cbor.decode(x("98 29" + "00" * 41), max_items=40), "over-limit"),
          "41 items: over-limit")
    check(raises(lambda: cbor.decode(x("a3 00 00 01 00 02 00"), max_items=2), "over-limit"),
          "map of 3 pairs at max_items 2")
    check(raises(lambda: cbor.decode(x("9b 00 00 00 01 00 00 00 00"), max_items=64), "over-limit"),
          "array claiming 2^32 items: over-limit before any allocation")
    check(raises(lambda: cbor.decode(x("5b 00 00 00 01 00 00 00 00")), "truncated"),
          "bstr claiming 2^32 bytes: truncated")
    check(cbor.decode(x("58 fe") + bytes(254), max_len=256) == bytes(254),
          "256 bytes at max_len 256")
    check(raises(lambda: cbor.decode(x("58 ff") + bytes(255), max_len=256), "oversized"),
          "257 bytes: oversized")
    check(cbor.decode(x("78 40") + b"a" * 64, max_text=64) == "a" * 64, "64-byte text at max_text 64")
    check(raises(lambda: cbor.decode(x("78 41") + b"a" * 65, max_text=64), "over-limit"),
          "65-byte text: over-limit")
    check(cbor.decode(memoryview(x("82 01 02"))) == [1, 2], "decodes a memoryview")


# ---- HMAC-SHA256: RFC 4231 test cases 1, 2 and 6 (key longer than the block)
def hmac():
    check(h(cose.hmac_sha256(b"\x0b" * 20, b"Hi There")) ==
          "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7", "RFC 4231 case 1")
    check(h(cose.hmac_sha256(b"Jefe", b"what do ya want for nothing?")) ==
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", "RFC 4231 case 2")
    check(h(cose.hmac_sha256(b"Jefe", b"what do ya ", b"want for ", memoryview(b"nothing?"))) ==
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", "RFC 4231 case 2 in parts")
    check(h(cose.hmac_sha256(b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First")) ==
          "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54", "RFC 4231 case 6")
    check(cose.equal(b"abc", b"abc") and not cose.equal(b"abc", b"abd") and not cose.equal(b"abc", b"ab"),
          "compare: equal, one bit off, other length")


# ---- COSE seal / open round trip (byte equality with CPython is mp_vectors.py)
def cose_seal_open():
    n = msgs.rating(buf, 1, 42, 4, 4, 1001, 1735700000, 5234567, 3500, 7)
    m = cose.seal(KEY, KID, memoryview(buf)[:n], out)
    check(m == 87, "an 8-byte-kid rating is 87 bytes", str(m))
    check(cose.open(KEY, KID, out[:m]) == bytes(buf[:n]), "open(seal(payload)) == payload")
    check(cose.open(KEY, "hf01-w01", out[:m]) == bytes(buf[:n]), "kid given as str")
    check(raises(lambda: cose.open(KEY, b"hf01-w02", out[:m]), "kid-mismatch"), "other kid: kid-mismatch")
    check(raises(lambda: cose.open(bytes(32), KID, out[:m]), "bad-mac"), "other key: bad-mac")
    check(raises(lambda: cose.open(None, KID, out[:m]), "unknown-device"), "no key: unknown-device")
    for i in (0, 1, 20, 40, m - 1):
        bad = bytearray(out[:m])
        bad[i] ^= 1
        check(raises(lambda: cose.open(KEY, KID, bad)), "a flipped bit at %d is refused" % i)
    check(raises(lambda: cose.seal(KEY, b"", buf[:n], out), "bad-kid"), "seal: empty kid")
    check(raises(lambda: cose.seal(KEY, b"k" * 17, buf[:n], out), "bad-kid"), "seal: 17-byte kid")
    check(raises(lambda: cose.seal(KEY[:16], KID, buf[:n], out), "bad-key"), "seal: 16-byte key")
    check(raises(lambda: cose.seal(KEY, KID, bytes(220), bytearray(300)), "oversized"),
          "seal: message over 256 bytes refused")
    # envelopes with a valid MAC but a shape the profile refuses
    def mac0(prot, unprot, payload, tag=None):
        to = b"\x84\x64MAC0"   # the MAC_structure built by hand, independently of cose.to_mac
        b = bytearray(300)
        q = cbor.put_bytes(b, 0, prot)
        b[q] = 0x40
        q = cbor.put_bytes(b, q + 1, payload)
        t = tag if tag is not None else cose.hmac_sha256(KEY, to, b[:q])
        e = bytearray(300)
        e[0] = 0xD1
        e[1] = 0x84
        q = cbor.put_bytes(e, 2, prot)
        e[q:q + len(unprot)] = unprot
        q = cbor.put_bytes(e, q + len(unprot), payload)
        q = cbor.put_bytes(e, q, t)
        return bytes(e[:q])

    PL = x("a3 00 10 01 01 0a 81 01")
    check(msgs.decode_down(cose.open(KEY, KID, mac0(x("a2 01 05 04 48") + KID, x("a0"), PL)))[0] == M.T_ACK,
          "hand-built envelope verifies")
    SHAPES = (
        (x("a2 01 05 04 48") + KID, x("a1 04 41 00"), PL, None, "unprotected-header"),
        (x("a1 01 05"), x("a0"), PL, None, "bad-protected-header"),
        (x("a3 01 05 04 48") + KID + x("05 00"), x("a0"), PL, None, "over-limit"),
        (x("a2 01 05 05 48") + KID, x("a0"), PL, None, "bad-protected-header"),
        (x("a2 01 24 04 48") + KID, x("a0"), PL, None, "wrong-alg"),
        (x("a2 01 61 35 04 48") + KID, x("a0"), PL, None, "wrong-alg"),
        (x("a2 01 05 04 68") + KID, x("a0"), PL, None, "bad-kid"),
        (x("a2 01 05 04 40"), x("a0"), PL, None, "bad-kid"),
        (x("a2 01 05 04 51") + b"k" * 17, x("a0"), PL, None, "bad-kid"),
        (x("a2 01 05 04 48") + KID, x("a0"), PL, bytes(8), "bad-mac"),
        (x("a2 01 05 04 48") + KID, x("80"), PL, None, "bad-cose-structure"),
    )
    for prot, unprot, pl, tag, want in SHAPES:
        r = reason_of(lambda: cose.open(KEY, KID, mac0(prot, unprot, pl, tag)))
        check(r == want, "envelope %s %s: %s" % (h(prot), h(unprot), want), "got %r" % r)
    check(raises(lambda: cose.open(KEY, KID, x("d1 83 40 a0 40")), "bad-cose-structure"), "array of 3")
    check(raises(lambda: cose.open(KEY, KID, x("d1 a0")), "bad-cose-structure"), "tagged map")
    check(raises(lambda: cose.open(KEY, KID, x("d1 84 40 a0 40 01")), "bad-cose-structure"), "int tag field")


# Each section in its own function: its data is garbage once it returns.
for section in (encoder, decoder, hmac, cose_seal_open):
    section()
    gc.collect()
done()
