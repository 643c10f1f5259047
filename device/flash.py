"""`countersign device flash`: MicroPython (esptool) when the board needs it, then the application.

The board first (``--board auto``):

- it answers with a MicroPython REPL (a stock board, an unprovisioned keypad, a keypad in service
  mode): ``sys.implementation._machine`` says ESP32C3 or ESP32S3 (a simulated keypad says linux), and
  its MicroPython must be 1.25 or later (.mpy v6.3), else ``--image``/``--version`` is needed;
- it prints ``CS:`` lines but offers no REPL: a provisioned keypad in normal mode. Refused, with how to
  restart it in service mode (link.py);
- it does not answer: a new board without MicroPython. With ``--image FILE`` or ``--version X`` (a file
  of ``--images``), esptool finds the chip (``chip-id``: ESP32-C3 or -S3, a C3 of revision v0.3 or
  later), the image is checked against it (name and header, image.py), ``--erase`` erases the whole
  flash first (a board that ran other firmware: MicroPython would otherwise find a filesystem it cannot
  mount and stop in ``fs_corrupted()``), esptool writes the image at offset 0 and the tool waits for
  MicroPython's REPL (its first boot makes the filesystem).

``--erase`` is refused on a board that answers and holds a Countersign config.json or a non-empty
outbox.bin: erasing would lose its identity and its unsent ratings (``countersign device replace``
reconciles them first). A simulated keypad runs no esptool: the image steps are skipped.

Then the application, in the same raw-REPL session (link.py; the app's watchdog is extended for it), as
common/bundle.py's ``install_into`` does on a simulated keypad's folder:

1. the bundle of the board (common/bundle.py): a .mpy tree, its manifest with sha256 per file, and the
   same tree as a ROMFS image; ``app.txt`` on the keypad names the installed one;
2. a usable ROMFS partition (``vfs.rom_ioctl`` and partition 0, large enough: not on stock images) takes
   the image (mpremote's own ``romfs deploy`` code) and the pointer becomes ``/rom``; otherwise the tree
   goes to ``apps/<id>/`` beside the old one (folders made, each file written new-then-rename in large
   chunks). When the app running now is the ROMFS image, the tree is installed and switched to first, so
   that the partition is never rewritten under the only app there is;
3. every file's sha256 (or the partition's) is checked on the keypad against the manifest;
4. main.py is written (new-then-rename) when it differs;
5. the switch: ``app.txt.new`` renamed over ``app.txt``, one rename (atomic on littlefs): a cut cable
   before it leaves the old app, after it the new one, and nothing else (config, key, outbox, counters)
   is ever written;
6. trees other than the new one and the one the old pointer named are removed;
7. a stock ``boot.py`` that holds only comments is removed: it would run before main.py with Ctrl-C
   still on (a window into the REPL on a provisioned keypad);
8. ``machine.reset()``: the keypad boots the new app.

An app already installed (same id, every hash right) is said so and not rewritten. ``--dry-run`` prints
the steps and touches nothing (it does not open the port: ``--board`` says which board it would be).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from countersign.common import bundle
from countersign.common.bundle import Bundle

from . import esp
from . import image as img
from .errors import SERVICE_MODE, DeviceToolError, NoAnswer, NormalMode, Refused
from .link import SESSION_WDT_MS, BoardInfo, KeypadLink

DEFAULT_IMAGES = Path.home() / ".cache" / "countersign" / "micropython"
INSTALL_MODES = ("auto", "mpy", "romfs")
REPL_AFTER_IMAGE_S = 60.0
MPY_VERSION = (6, 3)

Hook = Callable[[str], None]      # called after each step (tests cut the cable there)

_ROM_SIZE = """import vfs
_n=0
if hasattr(vfs,'rom_ioctl'):
 try:
  if vfs.rom_ioctl(1)>0:
   _d=vfs.rom_ioctl(2,0)
   if not isinstance(_d,int):
    _n=len(memoryview(_d))
 except Exception:
  pass
print(_n)"""

_ROM_SHA = """import vfs,hashlib,binascii
print('"%%s"'%%binascii.hexlify(hashlib.sha256(memoryview(vfs.rom_ioctl(2,0))[:%d]).digest()).decode())"""

_DATA = """import os,json
_r={}
for _p in ('config.json','outbox.bin'):
 try:
  _r[_p]=os.stat(_p)[6]
 except OSError:
  pass
print(json.dumps(_r))"""


@dataclass
class FlashResult:
    board: str
    bundle: Bundle
    mode: str = ""                  # "mpy" (the tree) or "romfs"
    already: bool = False           # the same app was installed: nothing rewritten
    image: Path | None = None       # the MicroPython image written, if any
    steps: list[str] = field(default_factory=list)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bundle(board: str, out: Path) -> Bundle:
    try:
        return bundle.build(board, out)
    except bundle.BundleError as exc:
        raise DeviceToolError(str(exc)) from exc


def describe(b: Bundle) -> str:
    return (f"bundle {b.path.name} for {b.board}: app {b.app_id}, {len(b.files)} .mpy files "
            f"{b.tree_bytes} bytes, ROMFS image {b.image.stat().st_size} bytes, main.py "
            f"{b.entry.stat().st_size} bytes")


def plan(port: str, board: str, b: Bundle, image: Path | None, version: str | None, erase: bool,
         install: str) -> list[str]:
    """Every step ``flash`` takes, as printed by --dry-run."""
    steps = [f"raw REPL on {port}: identify the board (sys.implementation._machine, MicroPython >= 1.25); "
             "a keypad in normal mode (CS: lines, no REPL) is refused: restart it in service mode"]
    if image is not None or version is not None or erase:
        what = str(image) if image is not None else f"{img.BOARDS[board]}-<date>-v{version}.bin"
        steps.append(f"{esp.show(esp.chip_id_argv(port))}   (the chip and its revision: a C3 needs v0.3+)")
        steps.append(f"check {what}: its name and its image header (chip id {img.CHIP_IDS[board]}) say "
                     f"{img.CHIP_NAMES[board]}, version >= 1.25")
        if erase:
            steps.append(f"{esp.show(esp.erase_argv(port, board))}   (refused if the board holds a "
                         "config.json or unsent ratings)")
        steps.append(esp.show(esp.write_argv(port, board, Path(what))))
        steps.append(f"wait for MicroPython's REPL on {port}")
    steps.append("raw REPL: extend the watchdog for the session if the app ran "
                 f"(machine.WDT(timeout={SESSION_WDT_MS}))")
    if install in ("auto", "romfs"):
        steps.append("raw REPL: a ROMFS partition (vfs.rom_ioctl, partition 0)? then deploy "
                     f"{b.image.name} ({b.image.stat().st_size} bytes) there and verify its sha256"
                     + ("" if install == "romfs" else "; otherwise the .mpy tree:"))
    if install in ("auto", "mpy"):
        steps.append(f"raw REPL: write {b.app_dir}/ ({len(b.files)} files, {b.tree_bytes} bytes; each "
                     "new-then-rename) and verify every file's sha256 on the keypad")
    steps += [f"raw REPL: write main.py if it differs ({b.entry.stat().st_size} bytes, new-then-rename)",
              "raw REPL: rename app.txt.new over app.txt (the switch)",
              "raw REPL: remove app trees other than the new one and the previous one",
              "raw REPL: remove boot.py if it holds only comments",
              "raw REPL: machine.reset()"]
    return steps


def flash(port: str, *, board: str = "auto", image: Path | None = None, version: str | None = None,
          images: Path = DEFAULT_IMAGES, bundle_dir: Path = bundle.DEFAULT_OUT, erase: bool = False,
          install: str = "auto", dry_run: bool = False, timeout: float = 5.0,
          say: Callable[[str], None] = print, hook: Hook | None = None) -> FlashResult:
    """Flash the keypad on ``port``; every step's text goes to ``say`` before it runs."""
    if install not in INSTALL_MODES:
        raise DeviceToolError(f"--install {install!r} (one of {', '.join(INSTALL_MODES)})")
    if image is not None and version is not None:
        raise DeviceToolError("give --image or --version, not both")
    if dry_run:
        kind = "esp32c3" if board == "auto" else board
        b = _bundle(kind, bundle_dir)
        say(describe(b))
        if image is not None and kind != "sim" and image.exists():
            img.check(image, kind)
        steps = plan(port, kind if kind != "sim" else "esp32c3", b, None if kind == "sim" else image,
                     None if kind == "sim" else version, erase and kind != "sim", install)
        for s in steps:
            say(f"[dry-run] {s}")
        return FlashResult(kind, b, steps=steps)

    want_image = image is not None or version is not None
    if erase and not want_image:
        raise DeviceToolError("--erase erases MicroPython too: give the image to write after it "
                              "(--image FILE or --version X)")
    link = _probe(port, timeout)
    written: Path | None = None
    try:
        if link is None:
            if board == "sim":
                raise NoAnswer(f"no simulated keypad answers on {port}")
            if not want_image:
                raise NoAnswer(f"no MicroPython REPL answers on {port}: a new board needs the MicroPython "
                               "image first (--image FILE or --version X, see docs/technician-guide.md); "
                               "if it is a keypad, is it powered and is this its port?")
            say(f"no MicroPython answers on {port}: a new board, writing MicroPython first")
            kind, written = _write_image(port, None if board == "auto" else board, image, version, images,
                                         erase, say)
            link = _wait_repl(port, timeout, say)
        else:
            kind = _board_of(link.board, board, port)
            say(f"{port}: {_name(link.board)}, MicroPython {link.board.version_text}")
            old = not _new_enough(link.board)
            if erase:
                held = _holds_data(link)
                if held:
                    raise Refused(f"--erase refused: the keypad on {port} holds {held}; erasing would lose "
                                  "them (use `countersign device replace` to move its window first)")
            if old and not want_image:
                raise Refused(f"the board on {port} runs MicroPython {link.board.version_text} (.mpy "
                              f"v{link.board.mpy_version[0]}.{link.board.mpy_version[1]}): the keypads need "
                              "1.25 or later; give the new image (--image FILE or --version X)")
            if want_image and kind == "sim":
                say("skip the MicroPython image" + (" and erase-flash" if erase else "")
                    + ": a simulated keypad (unix port) has no flash for esptool")
            elif want_image:
                link.close()
                link = None
                kind, written = _write_image(port, kind, image, version, images, erase, say)
                link = _wait_repl(port, timeout, say)
            elif not link.board.fs:
                raise Refused(f"the board on {port} has no filesystem mounted (it ran other firmware?): "
                              "flash it with --erase and the image")
        if not _new_enough(link.board):
            raise Refused(f"the board on {port} runs MicroPython {link.board.version_text} after the "
                          "image was written: the keypads need 1.25 or later")
        if not link.board.fs:
            raise Refused(f"the board on {port} has no filesystem mounted after the image was written: "
                          "flash it again with --erase")
        b = _bundle(kind, bundle_dir)
        say(describe(b))
        res = install_app(link, b, install, say, hook)
        res.image = written
        say(f"raw REPL: machine.reset(): the keypad boots app {b.app_id}")
        link.reset()
        (hook or (lambda _s: None))("reset")
        return res
    finally:
        if link is not None:
            link.close()


def _name(info: BoardInfo) -> str:
    return "a simulated keypad" if info.kind == "sim" else (info.machine or info.platform)


def _new_enough(info: BoardInfo) -> bool:
    return info.version >= img.MIN_VERSION and info.mpy_version == MPY_VERSION


def _probe(port: str, timeout: float) -> KeypadLink | None:
    """An open session, or None when nothing answers (NormalMode is raised: a keypad is there)."""
    link = KeypadLink(port, timeout)
    try:
        return link.open()
    except NormalMode:
        raise
    except NoAnswer:
        return None


def _board_of(info: BoardInfo, want: str, port: str) -> str:
    kind = info.kind
    if kind is None:
        raise Refused(f"the board on {port} is {info.machine or info.platform}: Countersign keypads are "
                      "ESP32-C3 or ESP32-S3 boards")
    if want != "auto" and want != kind:
        raise Refused(f"--board {want}, but the board on {port} is {_name(info)}")
    return kind


def _holds_data(link: KeypadLink) -> str | None:
    if not link.board.fs:
        return None
    sizes = link.eval_json(_DATA)
    held = []
    if "config.json" in sizes:
        held.append("a Countersign config.json (it is provisioned)")
    if sizes.get("outbox.bin", 0) > 0:
        held.append("an outbox.bin (ratings that may not have reached the gateway)")
    return " and ".join(held) or None


def _write_image(port: str, want: str | None, image: Path | None, version: str | None, images: Path,
                 erase: bool, say: Callable[[str], None]) -> tuple[str, Path]:
    argv = esp.chip_id_argv(port)
    say(esp.show(argv))
    chip = esp.parse_chip(esp.run(argv, say))
    kind = esp.check_chip(chip, want)
    say(f"chip: {chip.description}, revision {chip.revision_text}")
    path = image if image is not None else img.find(images, kind, version or "")
    if not path.exists():
        raise DeviceToolError(f"no MicroPython image {path} (download {img.BOARDS[kind]} from "
                              f"{img.DOWNLOAD[kind]})")
    name = img.check(path, kind)
    say(f"image {path.name}: {img.CHIP_NAMES[kind]}"
        + (f", MicroPython {name.version_text}" if name else ", not an official file name (header checked)"))
    if erase:
        argv = esp.erase_argv(port, kind)
        say(esp.show(argv))
        esp.run(argv, say)
    argv = esp.write_argv(port, kind, path)
    say(esp.show(argv))
    esp.run(argv, say)
    return kind, path


def _wait_repl(port: str, timeout: float, say: Callable[[str], None]) -> KeypadLink:
    """The REPL of the freshly written MicroPython (it resets after esptool; the first boot makes the
    filesystem; a native-USB port disappears and comes back meanwhile)."""
    say(f"waiting for MicroPython's REPL on {port} (its first boot makes the filesystem)")
    end = time.monotonic() + REPL_AFTER_IMAGE_S
    last: DeviceToolError | None = None
    while time.monotonic() < end:
        try:
            return KeypadLink(port, timeout).open()
        except NormalMode as exc:
            # A keypad kept its config (no --erase) and boots its old app in normal mode after esptool's
            # reset: the image is done, only the app is left, and that needs service mode again.
            raise NormalMode(f"MicroPython is written, but the keypad on {port} now runs its app in normal "
                             f"mode (no REPL): {SERVICE_MODE}, then run flash again without --image or "
                             "--version to install the app") from exc
        except DeviceToolError as exc:
            last = exc
            time.sleep(0.5)         # the port is not back yet (a real board, not a test's condition)
    raise NoAnswer(f"MicroPython did not answer on {port} within {REPL_AFTER_IMAGE_S:g} s after the image "
                   f"was written ({last})")


def _pointer(link: KeypadLink) -> str | None:
    raw = link.read_file(bundle.POINTER)
    if raw is None:
        return None
    return raw.decode(errors="replace").strip() or None


def _rom_size(link: KeypadLink) -> int:
    return int(link.eval_json(_ROM_SIZE))


def install_app(link: KeypadLink, b: Bundle, install: str = "auto", say: Callable[[str], None] = print,
                hook: Hook | None = None) -> FlashResult:
    """Steps 2-7 of the module doc on an open session; the caller resets the keypad."""
    step = hook or (lambda _s: None)
    res = FlashResult(b.board, b)
    old = _pointer(link)
    image = b.image.read_bytes()
    rom = _rom_size(link) if install in ("auto", "romfs") else 0
    if install == "romfs" and rom < len(image):
        raise Refused(f"--install romfs: the keypad on {link.port} has "
                      + (f"a ROMFS partition of {rom} bytes, the image is {len(image)}" if rom
                         else "no ROMFS partition (stock images have none)"))
    use_rom = rom >= len(image) > 0
    if install == "auto":
        say(f"ROMFS partition: {rom} bytes, the image goes there" if use_rom else
            "no usable ROMFS partition (stock images have none): the app goes on the filesystem as "
            f"{b.app_dir}/" + (f" (the ROMFS partition of {rom} bytes is too small)" if rom else ""))
    res.mode = "romfs" if use_rom else "mpy"
    entry = b.entry.read_bytes()
    main_ok = link.sha256([bundle.ENTRY])[bundle.ENTRY] == _sha(entry)
    where = bundle.ROM if use_rom else b.app_dir
    if old == where and main_ok and (_rom_ok(link, image) if use_rom else _tree_ok(link, b)):
        say(f"app {b.app_id} is already installed ({where}): nothing rewritten")
        res.already = True
        _boot_py(link, say)
        step("boot-py")
        return res
    if use_rom:
        if old == bundle.ROM:
            # The app running now is the partition's: the new tree first, so a cut while the partition
            # is rewritten leaves the new app (as .mpy) instead of a half image.
            _write_tree(link, b, say, step)
            _switch(link, b.app_dir, entry, main_ok, say, step)
            main_ok = True
        say(f"raw REPL: deploy {b.image.name} ({len(image)} bytes) to ROMFS partition 0")
        _deploy_rom(link, b.image)
        step("rom-written")
        if not _rom_ok(link, image):
            raise DeviceToolError(f"keypad on {link.port}: the ROMFS partition does not read back as "
                                  f"{b.image.name} (flash fault?); app.txt still names {old or 'nothing'}")
        say("ROMFS image verified (sha256 on the keypad)")
        step("rom-verified")
    else:
        _write_tree(link, b, say, step)
    _switch(link, where, entry, main_ok, say, step)
    keep = {b.app_id, old.rsplit("/", 1)[-1] if old and old.startswith(bundle.APPS + "/") else ""}
    for name, is_dir in link.listdir(bundle.APPS) or []:
        if name not in keep:
            say(f"raw REPL: remove {bundle.APPS}/{name}")
            if is_dir:
                link.rmtree(f"{bundle.APPS}/{name}")
            else:
                link.remove(f"{bundle.APPS}/{name}")
    step("cleaned")
    _boot_py(link, say)
    step("boot-py")
    return res


def _tree_ok(link: KeypadLink, b: Bundle) -> bool:
    got = link.sha256([f"{b.app_dir}/{rel}" for rel in sorted(b.files)])
    return all(got[f"{b.app_dir}/{rel}"] == digest for rel, (_n, digest) in b.files.items())


def _rom_ok(link: KeypadLink, image: bytes) -> bool:
    return bool(link.eval_json(_ROM_SHA % len(image)) == _sha(image))


def _write_tree(link: KeypadLink, b: Bundle, say: Callable[[str], None], step: Hook) -> None:
    dest = {rel: f"{b.app_dir}/{rel}" for rel in sorted(b.files)}
    dirs = {bundle.APPS, b.app_dir}
    for path in dest.values():
        parts = path.split("/")[:-1]
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    link.mkdirs(sorted(dirs, key=lambda d: (d.count("/"), d)))
    step("mkdirs")
    have = link.sha256(list(dest.values()))        # files of an earlier, interrupted install stay
    todo = [rel for rel in dest if have[dest[rel]] != b.files[rel][1]]
    say(f"raw REPL: write {b.app_dir}/: {len(todo)} of {len(dest)} files "
        f"({sum(b.files[r][0] for r in todo)} bytes)")
    for rel in todo:
        link.write_file(dest[rel], (b.tree / rel).read_bytes())
        step(f"file {rel}")
    step("tree-written")
    got = link.sha256(list(dest.values()))
    bad = [rel for rel in dest if got[dest[rel]] != b.files[rel][1]]
    if bad:
        raise DeviceToolError(f"keypad on {link.port}: {len(bad)} files of {b.app_dir} do not read back as "
                              f"written ({', '.join(bad[:3])}; flash fault?); the old app still runs")
    say(f"verified {len(dest)} files (sha256 on the keypad)")
    step("verified")


def _switch(link: KeypadLink, where: str, entry: bytes, main_ok: bool, say: Callable[[str], None],
            step: Hook) -> None:
    if not main_ok:
        say(f"raw REPL: write {bundle.ENTRY} ({len(entry)} bytes, new-then-rename)")
        link.write_file(bundle.ENTRY, entry)
        if link.sha256([bundle.ENTRY])[bundle.ENTRY] != _sha(entry):
            raise DeviceToolError(f"keypad on {link.port}: {bundle.ENTRY} does not read back as written")
    step("main")
    say(f"raw REPL: rename {bundle.POINTER}.new over {bundle.POINTER}: the app is {where}")
    link.write_file(bundle.POINTER, (where + "\n").encode())
    step("switched")


def _boot_py(link: KeypadLink, say: Callable[[str], None]) -> None:
    raw = link.read_file("boot.py")
    if raw is None:
        return
    text = raw.decode(errors="replace")
    if all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        say("raw REPL: remove boot.py (comments only; it would run before main.py with Ctrl-C still on)")
        link.remove("boot.py")
    else:
        say("warning: boot.py holds code and is left as it is: it runs before main.py with Ctrl-C on")


def _deploy_rom(link: KeypadLink, image: Path) -> None:
    """The image into ROMFS partition 0 with mpremote's own `romfs deploy` code (it knows both the
    partition object of an esp32 image and a plain buffer), on this session's transport."""
    from mpremote import commands
    from mpremote.transport import TransportError, TransportExecError

    state = SimpleNamespace(transport=link.transport, ensure_raw_repl=lambda: None, did_action=lambda: None)
    args = SimpleNamespace(path=str(image), partition=0, mpy=False)
    said = io.StringIO()
    link.transport.gap = max(link.timeout, 10.0)     # mpremote's commands wait up to 10 s (an erase)
    try:
        with contextlib.redirect_stdout(said):
            commands._do_romfs_deploy(state, args)
    except (TransportError, OSError) as exc:
        if isinstance(exc, TransportExecError):
            raise DeviceToolError(f"ROMFS deploy on {link.port} failed: {exc}") from exc
        raise NoAnswer(f"the keypad on {link.port} stopped answering during the ROMFS deploy ({exc})"
                       ) from exc
    except (commands.CommandError, SystemExit) as exc:
        last = [ln.strip() for ln in said.getvalue().replace("\r", "\n").splitlines() if ln.strip()]
        raise DeviceToolError(f"ROMFS deploy on {link.port} failed: {str(exc) or (last or ['?'])[-1]}"
                              ) from exc
