"""`countersign`: one command, a subcommand per role. Each component registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (subcommand, module providing ``register(subparsers)``, help). Modules are imported lazily so that a
# technician's `countersign device ...` does not load the gateway, and a broken component cannot stop
# the others' commands from working.
_ROLES = [
    ("gateway", "countersign.gateway.cli", "run the hall gateway and generate its broker config"),
    ("province", "countersign.province.cli", "run the provincial receiver and print reports"),
    ("sim", "countersign.sim.cli", "simulate devices, halls and a province"),
    ("decode", "countersign.protocol.cli", "decode and verify a device or gateway message"),
    ("device", "countersign.device.cli", "flash, provision, inspect and replace keypads over serial"),
]


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="countersign",
                                description="Countersign: signed ratings from the service counter.")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = p.add_subparsers(dest="role", required=True, metavar="ROLE")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, module, help_text in _ROLES:
        if wanted not in (None, name):
            sub.add_parser(name, help=help_text)   # listed in --help, loaded only when used
            continue
        sp = sub.add_parser(name, help=help_text)
        importlib.import_module(module).register(sp)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
