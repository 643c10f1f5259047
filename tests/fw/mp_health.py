# cs.msgs.health with and without the optional bad_down field; prints the payloads as hex for the
# pytest side to compare with the CPython encoder's (tests/test_61_fw_codec.py).
import mpyboot  # noqa: F401 (sys.path)
from binascii import hexlify
from cs import msgs

buf = bytearray(200)
for bad in (0, 3, 70000):
    n = msgs.health(buf, 4, 1, 7, 5, b"cs-fw 1.0.0", 1, 40000, 2, 8998, 300, -61, 3, 0, None, bad)
    print("HB", bad, hexlify(buf[:n]).decode())
