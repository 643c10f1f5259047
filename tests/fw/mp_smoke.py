import mpyboot
import sys
mpyboot.check(sys.implementation.name == "micropython", "runs on micropython")
mpyboot.check(bool(mpyboot.FIRMWARE), "firmware path given")
mpyboot.done()
