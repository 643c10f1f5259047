"""`countersign gateway ...`: run the gateway, generate the hall broker config, make a signing key."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from countersign.protocol.errors import ProtocolError
from countersign.protocol.keystore import Keystore, new_signing_key, public_bytes, save_signing_key

from .brokerconf import write_broker_files
from .errors import ConfigError

log = logging.getLogger("countersign.gateway.cli")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="gateway_cmd", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the hall gateway until SIGTERM/SIGINT")
    run.add_argument("--config", required=True, type=Path, help="gateway TOML file")
    run.set_defaults(func=_run)

    bc = sub.add_parser("broker-config", help="write the hall mosquitto config from the keystore")
    bc.add_argument("--keystore", required=True, type=Path)
    bc.add_argument("--out", required=True, type=Path, help="folder for mosquitto.conf, passwd, acl")
    bc.add_argument("--port", type=int, default=1883)
    bc.add_argument("--bind", default="0.0.0.0")
    bc.add_argument("--gateway-password-file", required=True, type=Path)
    bc.add_argument("--run-as", default=None, help="user mosquitto drops to (e.g. mosquitto)")
    bc.set_defaults(func=_broker_config)

    kg = sub.add_parser("keygen", help="write a new Ed25519 signing key, print its public key hex")
    kg.add_argument("--out", required=True, type=Path)
    kg.add_argument("--force", action="store_true", help="overwrite an existing key file")
    kg.set_defaults(func=_keygen)


def _run(args: argparse.Namespace) -> int:
    from .config import GatewayConfig
    from .gateway import Gateway

    stop = threading.Event()
    try:
        cfg = GatewayConfig.load(args.config)
        gw = Gateway(cfg, on_fatal=lambda _exc: stop.set())
    except (ConfigError, ProtocolError, OSError) as exc:
        print(f"countersign gateway: {exc}", file=sys.stderr)
        return 2

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    def _on_hup(_signum: int, _frame: object) -> None:
        try:
            gw.reload_keystore()
        except ProtocolError as exc:
            log.error("keystore reload failed, keeping the old one: %s", exc)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_hup)
    gw.start()
    print(f"gateway {cfg.hall} ready http={gw.http_port}", file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        gw.stop()
    if gw.failed.is_set():
        print("countersign gateway: ingest failed, exiting for a restart", file=sys.stderr)
        return 1
    return 0


def _broker_config(args: argparse.Namespace) -> int:
    try:
        ks = Keystore.load(args.keystore)
        password = args.gateway_password_file.read_text(encoding="utf-8").strip()
    except (ProtocolError, OSError) as exc:
        print(f"countersign gateway broker-config: {exc}", file=sys.stderr)
        return 2
    if not password:
        print("countersign gateway broker-config: the gateway password file is empty", file=sys.stderr)
        return 2
    files = write_broker_files(args.out, ks, password, port=args.port, bind=args.bind, run_as=args.run_as)
    print(f"wrote {files.conf}, {files.passwd}, {files.acl}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.force:
        print(f"countersign gateway keygen: {args.out} exists (use --force to replace it)", file=sys.stderr)
        return 2
    key = new_signing_key()
    save_signing_key(args.out, key)
    print(public_bytes(key).hex())
    return 0
