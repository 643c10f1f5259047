# Keypad entry point: the port runs this file at power-up. It stays small and stable: the application
# it starts is installed beside it (app.txt names where: apps/<id> for the .mpy tree on the filesystem,
# /rom for a ROMFS image; common/bundle.py) and can change without it.
while True:
    try:
        import micropython

        micropython.kbd_intr(-1)    # first of all: no Ctrl-C into a REPL until cs.start decides
        break
    except KeyboardInterrupt:       # one that arrived before the line above took effect: again
        pass
import sys


def _app():
    try:
        with open("app.txt") as f:
            root = f.read().strip()
    except OSError:
        return                  # a source tree (the tests): cs/ and boards/ are on sys.path already
    if root and root not in sys.path:
        sys.path.insert(0, root)


_app()
try:
    from cs import start
except ImportError as e:
    # No application installed (or a tree that cannot load): nothing runs, so nothing can rate, and
    # `countersign device flash` needs the REPL to put one there.
    print("CS:NOAPP", e)
    micropython.kbd_intr(3)
else:
    start.run()
