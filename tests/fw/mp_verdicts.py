# The firmware decoder's verdict on many inputs in one MicroPython process (the differential and fuzz
# runs: starting an interpreter per input would cost more than the decoding).
# Input file (env CS_VERDICT_IN): a first line "<key hex> <kid hex>", then one case per line:
# "u <hex>" (judged on the gateway's path: cose.open + decode_up), "d <hex>" (the keypad's own receive
# path: cose.open + decode_down), "c <hex>" (cbor.decode alone, the loose limits of the CPython
# tests), "m <key hex> <hex>" (cose.open of any kid with that key: the envelope only) or
# "h <key hex> <hex>" (HMAC-SHA256 of the bytes; prints the tag). Output: one line per case, in order:
# "ok", the reason, or "CRASH <exception>" for anything but ValueError (a crash is a finding, never a
# verdict).
import mpyboot
import os
import gc
from binascii import hexlify, unhexlify

from cs import cbor, cose, msgs
import upmsgs as M


def judge(kind, key, kid, data):
    if kind == "m" or kind == "h":
        sp = data.index(b" ")
        key = unhexlify(data[:sp])
        data = unhexlify(data[sp + 1:])
        if kind == "h":
            return hexlify(cose.hmac_sha256(key, data)).decode()
        cose.open(key, None, data)
    elif kind == "c":
        cbor.decode(data, 16, 1 << 16, 1 << 20)
        return None
    elif kind == "u":
        M.decode_up(cose.open(key, kid, data))
    else:
        msgs.decode_down(cose.open(key, kid, data))


def main():
    with open(os.getenv("CS_VERDICT_IN")) as fh:
        k, i = fh.readline().split()
        key = unhexlify(k)
        kid = unhexlify(i)
        n = 0
        for line in fh:
            line = line.strip()
            if not line:
                continue
            kind = line[0]
            try:
                arg = line[2:].encode()
                r = judge(kind, key, kid, arg if kind in "mh" else unhexlify(arg))
                print(r or "ok")
            except ValueError as e:
                print(e.args[0] if e.args else "?")
            except Exception as e:      # noqa: a crash is reported, and the run goes on
                print("CRASH", type(e).__name__, e)
            n += 1
            if n % 256 == 0:
                gc.collect()
    print("END", n)


main()
