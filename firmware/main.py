# Keypad entry point. The board is chosen by platform: the unix port is the simulator's board.
#
# Ctrl-C on the console (mpremote, `countersign device ...`) ends the app with KeyboardInterrupt and leaves
# the REPL: on a board the port's own REPL, on the unix port `micropython -i main.py` (sim/fwdevice.py).
# An unprovisioned keypad returns from main() at once and waits in the REPL for provisioning. Running
# this file again in the same interpreter starts the app again (the tools do that after an inspection).
import sys


def _board_name(cfg):
    # The unix port is the simulator's board; on hardware the config names the board (default: the
    # reference ESP32-C3).
    if sys.platform == "linux":
        return "sim"
    return getattr(cfg, "board", "esp32c3")


def _mount_app():
    # On a keypad the port mounts the ROMFS partition at /rom itself. The unix port (the simulator) has
    # no ROM: mount the image file the simulator put beside this file (see sim/bundle.py).
    if sys.platform != "linux" or "/rom" in sys.path:
        return      # a keypad, or main.py run again in the same process (`countersign device inspect`)
    import vfs

    try:
        with open("firmware.romfs", "rb") as f:
            image = f.read()
    except OSError:
        return      # running from a source tree (tests): cs/ and boards/ are on sys.path already
    vfs.mount(vfs.VfsRom(image), "/rom")
    sys.path.insert(0, "/rom")


def main():
    _mount_app()
    import asyncio

    from cs import VERSION, config

    try:
        cfg = config.load()
    except (ValueError, OSError) as e:
        print("CS:BADCONFIG", e)
        cfg = None
    if cfg is None:
        print("CS:BOOT fw=%s" % VERSION)
        print("CS:UNPROVISIONED")
        return   # the REPL stays available for provisioning
    from cs.app import App

    import boards

    board = boards.load(_board_name(cfg), cfg)
    asyncio.run(App(board, cfg).run())


main()
