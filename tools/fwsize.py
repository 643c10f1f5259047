"""Firmware bundle sizes against the checked-in budget (``make firmware``).

Builds the bundle of every board that goes onto a keypad (``countersign.common.bundle.build``: cs/ and
boards/ compiled by mpy-cross into a .mpy tree, the same tree as a ROMFS image, and main.py), and
compares with ``firmware/size-budget.json``: per board the tree (what ``countersign device flash``
writes under ``apps/<id>/`` on a stock image) and the ROMFS image (for an image with a ROMFS partition),
main.py, and every .mpy module, whose size is read out of the ROMFS image itself (what is really
flashed, not a recompilation) and must equal the tree's file. It prints each figure with its budget and
headroom, ESPHome style, and exits 1 when anything is over budget, so a growing firmware fails the build
instead of a keypad in the field.

    python tools/fwsize.py [--bundle out/firmware-bundle] [--budget firmware/size-budget.json]
                           [--board esp32c3 ...] [--no-build]

Exit codes: 0 within budget, 1 over budget, 2 the bundle or the budget could not be read or built.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = ROOT / "out" / "firmware-bundle"
DEFAULT_BUDGET = ROOT / "firmware" / "size-budget.json"

# ROMFS format (MicroPython's vfs.VfsRom, written by mpremote.romfs.VfsRomWriter): a 3-byte header and a
# length, then records of (kind, length, payload) with lengths as big-endian base-128 varints.
_ROMFS_HEADER = b"\xd2\xcd\x31"
_KIND_PADDING = 1
_KIND_VERBATIM = 2
_KIND_POINTER = 3
_KIND_DIRECTORY = 4
_KIND_FILE = 5
_BAR = 20


class SizeError(Exception):
    """The bundle or the budget cannot be read: not an over-budget result but a broken check."""


def _uint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    while True:
        if pos >= len(data):
            raise SizeError("ROMFS image truncated inside a length")
        b = data[pos]
        pos += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return value, pos


def _records(data: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(kind, payload start, payload end) of each record in data[pos:end]."""
    while pos < end:
        kind, pos = _uint(data, pos)
        length, pos = _uint(data, pos)
        if pos + length > end:
            raise SizeError("ROMFS record runs past its container")
        yield kind, pos, pos + length
        pos += length


def _name(data: bytes, pos: int) -> tuple[str, int]:
    n, pos = _uint(data, pos)
    return data[pos:pos + n].decode("ascii"), pos + n


def romfs_files(image: bytes) -> dict[str, int]:
    """Every file in a ROMFS image with its size in bytes, by path ("cs/app.mpy")."""
    if not image.startswith(_ROMFS_HEADER):
        raise SizeError("not a ROMFS image (bad header)")
    length, pos = _uint(image, len(_ROMFS_HEADER))
    if pos + length != len(image):
        raise SizeError(f"ROMFS image length {length} does not match the file ({len(image) - pos} bytes)")
    files: dict[str, int] = {}

    def walk(start: int, end: int, prefix: str) -> None:
        for kind, a, b in _records(image, start, end):
            if kind == _KIND_DIRECTORY:
                name, p = _name(image, a)
                walk(p, b, prefix + name + "/")
            elif kind == _KIND_FILE:
                name, p = _name(image, a)
                size = 0
                for sub, sa, sb in _records(image, p, b):
                    if sub == _KIND_VERBATIM:
                        size += sb - sa
                    elif sub == _KIND_POINTER:
                        _offset, q = _uint(image, sa)
                        n, _ = _uint(image, q)
                        size += n
                files[prefix + name] = size
            elif kind in (_KIND_PADDING, _KIND_VERBATIM, _KIND_POINTER):
                continue        # padding, or data referenced by a pointer record: counted with its file
            else:
                raise SizeError(f"unknown ROMFS record kind {kind}")

    walk(pos, len(image), "")
    return files


@dataclass(frozen=True)
class Figure:
    name: str
    used: int
    budget: int | None          # None: measured and shown, no budget set

    @property
    def over(self) -> bool:
        return self.budget is not None and self.used > self.budget

    def line(self, width: int) -> str:
        if self.budget is None:
            return f"{self.name:<{width}}  {'':{_BAR + 2}}         {self.used:7d} B  (no budget)"
        frac = self.used / self.budget if self.budget else float("inf")
        filled = min(_BAR, round(frac * _BAR))
        bar = "[" + "=" * filled + " " * (_BAR - filled) + "]"
        status = "OVER BUDGET" if self.over else "ok"
        return (f"{self.name:<{width}}  {bar} {frac * 100:6.1f}%  {self.used:7d} B of {self.budget:7d} B, "
                f"headroom {self.budget - self.used:6d} B  {status}")


def load_budget(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SizeError(f"cannot read the budget {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SizeError(f"{path}: not a JSON object")
    if not isinstance(data.get("main.py"), int) or data["main.py"] <= 0:
        raise SizeError(f"{path}: 'main.py' must be a positive integer (bytes)")
    boards = data.get("boards")
    if not isinstance(boards, dict) or not boards:
        raise SizeError(f"{path}: 'boards' must map each board to its 'tree' and 'image' budgets")
    for board, b in boards.items():
        for key in ("tree", "image"):
            if not isinstance(b, dict) or not isinstance(b.get(key), int) or b[key] <= 0:
                raise SizeError(f"{path}: boards.{board}.{key} must be a positive integer (bytes)")
    modules = data.get("modules", {})
    if not isinstance(modules, dict) or not all(isinstance(v, int) and v > 0 for v in modules.values()):
        raise SizeError(f"{path}: 'modules' must map module paths to positive byte counts")
    return data


def _bundle(out: Path, board: str, build: bool) -> Any:
    from countersign.common import bundle as fwbundle

    try:
        if build:
            return fwbundle.build(board, out)
        return fwbundle.load(fwbundle.path_for(board, out))
    except fwbundle.BundleError as exc:
        raise SizeError(f"no bundle of {board} in {out}: {exc}") from exc


def figures(out: Path, budget: dict[str, Any], boards: list[str] | None = None,
            build: bool = True) -> list[Figure]:
    """Every board's tree and image with their budgets, main.py, then each module of each board."""
    modules: dict[str, int] = budget.get("modules", {})
    names = boards or list(budget["boards"])
    unknown = [b for b in names if b not in budget["boards"]]
    if unknown:
        raise SizeError(f"no budget for board {', '.join(unknown)} (add it under 'boards')")
    out_figs: list[Figure] = []
    module_figs: dict[str, Figure] = {}
    seen: set[str] = set()
    entry = 0
    for board in names:
        b = _bundle(out, board, build)
        try:
            image = b.image.read_bytes()
            entry = b.entry.stat().st_size
        except OSError as exc:
            raise SizeError(f"bundle {b.path} is incomplete: {exc}") from exc
        files = romfs_files(image)
        tree = {rel: size for rel, (size, _digest) in b.files.items()}
        if files != tree:
            differ = sorted(set(files) ^ set(tree)) or sorted(k for k in files if files[k] != tree[k])
            raise SizeError(f"{board}: the ROMFS image and the .mpy tree differ ({', '.join(differ[:5])})")
        seen |= set(files)
        per = budget["boards"][board]
        out_figs.append(Figure(f"{board} tree ({b.app_dir})", b.tree_bytes, per["tree"]))
        out_figs.append(Figure(f"{board} ROMFS image", len(image), per["image"]))
        for name, size in files.items():
            module_figs.setdefault(name, Figure("  " + name, size, modules.get(name)))
    from countersign.common import bundle as fwbundle

    known = set(seen)
    for board in budget["boards"]:          # a module of a board not measured this time still exists
        with contextlib.suppress(fwbundle.BundleError):
            known |= set(fwbundle.sources(board))
    missing = sorted(set(modules) - known)
    if missing:
        raise SizeError(f"budgeted modules in no board's bundle: {', '.join(missing)} "
                        "(renamed? update the budget)")
    out_figs.append(Figure("main.py", entry, budget["main.py"]))
    return out_figs + [module_figs[k] for k in sorted(module_figs)]


def report(figs: list[Figure]) -> str:
    width = max(len(f.name) for f in figs)
    return "\n".join(f.line(width) for f in figs)


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE,
                    help="build folder of the bundles (default: %(default)s)")
    ap.add_argument("--budget", type=Path, default=DEFAULT_BUDGET, help="budget JSON (default: %(default)s)")
    ap.add_argument("--board", action="append", help="only this board (repeatable; default: every board "
                    "in the budget)")
    ap.add_argument("--no-build", action="store_true", help="check existing bundles, do not build them")
    args = ap.parse_args(argv)
    try:
        budget = load_budget(args.budget)
        figs = figures(args.bundle, budget, args.board, build=not args.no_build)
    except SizeError as exc:
        print(f"fwsize: {exc}", file=sys.stderr)
        return 2
    print(f"firmware bundles in {_show(args.bundle)}  (budget {_show(args.budget)})")
    print(report(figs))
    over = [f.name.strip() for f in figs if f.over]
    if over:
        print(f"FAILED: over budget: {', '.join(over)} (shrink the firmware, or raise the budget in "
              f"{_show(args.budget)} with a reason in its comment)")
        return 1
    print("firmware size: within budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
