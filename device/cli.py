"""`countersign device flash | provision | inspect | replace`: the technician's tools.

Every failure a technician can meet (a wrong port, a keypad that does not answer, a refused
re-provisioning, unsent ratings) is one line on stderr, ``countersign device: ...``, and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from countersign.protocol.errors import ProtocolError

from .errors import DeviceToolError


def _hall_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the hall's files (registration)")
    g.add_argument("--keystore", required=True, type=Path, help="the hall gateway's keystore JSON")
    g.add_argument("--registry", type=Path,
                   help="write the keypad straight into the province's registry JSON: approved at once, "
                        "for a single small deployment or the demo only; a provincial platform takes "
                        "keypads by --enrollment-dir records and an administrator's approval")
    g.add_argument("--enrollment-dir", type=Path,
                   help="write the enrollment record <device>-e<epoch>.enroll.json here (0600; it holds "
                        "the key, never printed): carry it to the platform's administrator, who uploads "
                        "and approves it; ratings made before that are held, never lost")
    g.add_argument("--technician", help="your name in the enrollment record (default: the unix user)")
    g.add_argument("--broker-dir", type=Path, help="the hall broker's folder (passwd, acl)")
    g.add_argument("--gateway-password-file", type=Path,
                   help="regenerate passwd whole (default: keep the service users' lines)")
    g.add_argument("--broker-pid", help="mosquitto's pid: SIGHUP after the files change")
    g.add_argument("--broker-pid-file", type=Path)
    g.add_argument("--gateway-pid", help="the gateway's pid: SIGHUP (reloads its keystore)")
    g.add_argument("--gateway-pid-file", type=Path,
                   help="where the running gateway writes its pid (gateway run --pid-file): "
                        "/run/countersign-gateway/gateway.pid under the shipped unit")


def _keypad_args(p: argparse.ArgumentParser, window: bool = True) -> None:
    g = p.add_argument_group("the keypad's config")
    if window:
        g.add_argument("--window", required=True, help="service window number")
    g.add_argument("--broker-host", required=True, help="the hall broker as the keypad reaches it")
    g.add_argument("--broker-port", type=int, default=1883)
    g.add_argument("--device-id", help="default: <hall>-<6 random hex digits>")
    g.add_argument("--key-file", type=Path, help="the 32-byte key as 64 hex digits (default: random)")
    g.add_argument("--epoch", type=int, help="default: one more than registered (1 for a new id)")
    g.add_argument("--scale", type=int, choices=(4, 5), default=4)
    g.add_argument("--heartbeat", type=int, default=60, help="seconds")
    g.add_argument("--no-invite-key", action="store_true")
    g.add_argument("--wifi-ssid")
    g.add_argument("--wifi-password-file", type=Path)
    g.add_argument("--option", action="append", default=[], metavar="NAME=JSON",
                   help="a board setting, e.g. sim_port=40123 or wdt_ms=8000 (repeatable)")
    g.add_argument("--label-svg", type=Path, help="also save the label's QR code as SVG")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="device_cmd", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--port", required=True, help="the keypad's serial port (/dev/ttyUSB0)")
    common.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the keypad")

    f = sub.add_parser("flash", parents=[common],
                       help="MicroPython (esptool, when needed) + the app (over the raw REPL)")
    f.add_argument("--image", type=Path,
                   help="MicroPython image file, e.g. ESP32_GENERIC_C3-20250415-v1.25.0.bin")
    f.add_argument("--version", help="MicroPython version: its official image is taken from --images")
    f.add_argument("--images", type=Path,
                   help="folder of downloaded images (default ~/.cache/countersign/micropython)")
    f.add_argument("--erase", action="store_true",
                   help="erase the whole flash before the image (a board that ran other firmware); "
                        "refused on a keypad with a config or unsent ratings")
    f.add_argument("--board", choices=("auto", "esp32c3", "esp32s3", "sim"), default="auto")
    f.add_argument("--install", choices=("auto", "mpy", "romfs"), default="auto",
                   help="how the app goes on: a ROMFS partition when the board has one (auto), or the "
                        ".mpy tree")
    f.add_argument("--bundle", type=Path,
                   help="build folder of the app bundles (default out/firmware-bundle)")
    f.add_argument("--dry-run", action="store_true", help="print every step, touch nothing")
    f.set_defaults(func=_flash)

    p = sub.add_parser("provision", parents=[common], help="identity + config onto a keypad, register it")
    _keypad_args(p)
    _hall_args(p)
    p.add_argument("--force", action="store_true", help="re-provision a provisioned keypad")
    p.set_defaults(func=_provision)

    i = sub.add_parser("inspect", parents=[common], help="firmware, config, outbox, heap, reset cause")
    i.add_argument("--json", action="store_true")
    i.add_argument("--no-resume", action="store_true", help="leave the app stopped (REPL) afterwards")
    i.set_defaults(func=_inspect)

    r = sub.add_parser("replace", parents=[common], help="a new keypad takes over an old one's window")
    r.add_argument("--old", required=True, help="the old keypad's device id")
    r.add_argument("--old-port", help="the old keypad's serial port (its unsent ratings are read there)")
    r.add_argument("--same-id", action="store_true", help="keep the id (the same keypad reflashed)")
    r.add_argument("--force-revoke", action="store_true",
                   help="revoke the old keypad even if some of its ratings could not be reconciled")
    r.add_argument("--drain-timeout", type=float, default=30.0)
    r.add_argument("--gateway-url", help="the gateway's HTTP API (waits for its forwarding backlog)")
    _keypad_args(r, window=False)
    _hall_args(r)
    r.set_defaults(func=_replace)


def _say(text: str) -> None:
    print(text, flush=True)


def _run(fn: Any, args: argparse.Namespace) -> int:
    try:
        rc: int = fn(args)
        return rc
    except (DeviceToolError, ProtocolError) as exc:
        print(f"countersign device: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"countersign device: {exc}", file=sys.stderr)
        return 2


def _hall(args: argparse.Namespace) -> Any:
    from .hall import HallFiles, read_pid

    return HallFiles(args.keystore, args.registry, args.broker_dir,
                     read_pid(args.broker_pid, args.broker_pid_file),
                     read_pid(args.gateway_pid, args.gateway_pid_file), args.gateway_password_file,
                     enrollment_dir=args.enrollment_dir, technician=args.technician)


def _request(args: argparse.Namespace, window: str) -> Any:
    from .provision import ProvisionRequest

    key = None
    if args.key_file is not None:
        try:
            key = bytes.fromhex(args.key_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise DeviceToolError(f"cannot read a 64-hex-digit key from {args.key_file}") from exc
    options: dict[str, Any] = {}
    for opt in args.option:
        name, sep, value = opt.partition("=")
        if not sep or not name:
            raise DeviceToolError(f"--option wants NAME=VALUE, got {opt!r}")
        try:
            options[name] = json.loads(value)
        except ValueError:
            options[name] = value
    wifi_pw = args.wifi_password_file.read_text().strip() if args.wifi_password_file else None
    return ProvisionRequest(window=window, broker_host=args.broker_host, broker_port=args.broker_port,
                            device_id=args.device_id, key=key, epoch=args.epoch, scale=args.scale,
                            invite_key=not args.no_invite_key, heartbeat_s=args.heartbeat,
                            wifi_ssid=args.wifi_ssid, wifi_password=wifi_pw, options=options)


def _after_provision(res: Any, svg: Path | None) -> None:
    from . import label

    i = res.identity
    for line in res.done:
        _say(f"registered: {line}")
    _say(f"provisioned {i.device_id}: hall {i.hall}, window {i.window}, epoch {i.epoch}")
    _say("the keypad was reset: it boots with the new identity, in normal mode")
    _say(label.render(i.device_id, i.hall, i.window, i.epoch, svg))


def _flash(args: argparse.Namespace) -> int:
    def go(a: argparse.Namespace) -> int:
        from countersign.common import bundle

        from .flash import DEFAULT_IMAGES, flash

        r = flash(a.port, board=a.board, image=a.image, version=a.version, images=a.images or DEFAULT_IMAGES,
                  bundle_dir=a.bundle or bundle.DEFAULT_OUT, erase=a.erase, install=a.install,
                  dry_run=a.dry_run, timeout=a.timeout, say=_say)
        if not a.dry_run:
            _say(f"flashed: app {r.bundle.app_id} ({r.mode}) on a {r.board} keypad"
                 + (f", MicroPython from {r.image.name}" if r.image else "")
                 + ("; it was already installed" if r.already else "") + "; the keypad was reset")
        return 0
    return _run(go, args)


def _provision(args: argparse.Namespace) -> int:
    def go(a: argparse.Namespace) -> int:
        from .provision import provision

        res = provision(a.port, _hall(a), _request(a, a.window), force=a.force, timeout=a.timeout)
        _after_provision(res, a.label_svg)
        return 0
    return _run(go, args)


def _inspect(args: argparse.Namespace) -> int:
    def go(a: argparse.Namespace) -> int:
        from .inspect import inspect, text

        r = inspect(a.port, a.timeout, resume=not a.no_resume)
        _say(json.dumps(r, indent=1) if a.json else text(r))
        return 0
    return _run(go, args)


def _replace(args: argparse.Namespace) -> int:
    def go(a: argparse.Namespace) -> int:
        from .replace import replace

        r = replace(_hall(a), a.old, a.port, _request(a, ""), old_port=a.old_port, same_id=a.same_id,
                    force_revoke=a.force_revoke, drain_timeout=a.drain_timeout, timeout=a.timeout,
                    gateway_url=a.gateway_url, say=_say)
        _say(f"{r.old}: {len(r.reconciled)} unsent ratings reconciled"
             + (f", {len(r.outstanding)} outstanding" if r.outstanding else "")
             + ("" if a.same_id else f"; {r.old} revoked"))
        _after_provision(r.new, a.label_svg)
        return 0
    return _run(go, args)
