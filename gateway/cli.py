"""`countersign gateway ...`: run the gateway, generate the hall broker config, make a signing key."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
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
    run.add_argument("--pid-file", type=Path, default=None,
                     help="write the gateway's pid here (0644) while it runs, e.g. "
                          "/run/countersign-gateway/gateway.pid: the device tools signal it with it")
    run.set_defaults(func=_run)

    bc = sub.add_parser("broker-config", help="write the hall mosquitto config from the keystore")
    bc.add_argument("--keystore", required=True, type=Path)
    bc.add_argument("--out", required=True, type=Path, help="folder for mosquitto.conf, passwd, acl")
    bc.add_argument("--port", type=int, default=1883)
    bc.add_argument("--bind", default="0.0.0.0")
    bc.add_argument("--gateway-password-file", required=True, type=Path)
    bc.add_argument("--run-as", default=None, help="user mosquitto drops to (e.g. mosquitto)")
    bc.add_argument("--pid-file", type=Path, default=None,
                    help="mosquitto's pid file, read by the device tools: /run/mosquitto/mosquitto.pid")
    bc.set_defaults(func=_broker_config)

    kg = sub.add_parser("keygen", help="write a new Ed25519 signing key, print its public key hex")
    kg.add_argument("--out", required=True, type=Path)
    kg.add_argument("--force", action="store_true", help="overwrite an existing key file")
    kg.set_defaults(func=_keygen)

    tok = sub.add_parser("token", help="issue, revoke and list the counter systems' API credentials")
    tsub = tok.add_subparsers(dest="token_cmd", required=True, metavar="ACTION")
    ti = tsub.add_parser("issue", help="issue a credential; its token goes to --out (0600), never to stdout")
    ti.add_argument("--tokens", required=True, type=Path, help="credentials file ([http] tokens)")
    ti.add_argument("--name", required=True, help="who holds it, e.g. counter-pc-3 (shown in every log line)")
    ti.add_argument("--windows", required=True, help="windows it may drive: 1,2 or '*' for every window")
    ti.add_argument("--out", required=True, type=Path, help="file for the token, for the counter PC")
    ti.add_argument("--owner", default=None,
                    help="user[:group] the credentials file belongs to when new (the gateway's, e.g. "
                         "countersign); a rewrite keeps the file's owner")
    ti.set_defaults(func=_token_issue)
    tr = tsub.add_parser("revoke", help="revoke a credential (the running gateway refuses it at once)")
    tr.add_argument("--tokens", required=True, type=Path)
    tr.add_argument("--name", required=True)
    tr.set_defaults(func=_token_revoke)
    tl = tsub.add_parser("list", help="list the credentials: names, windows, created, revoked")
    tl.add_argument("--tokens", required=True, type=Path)
    tl.set_defaults(func=_token_list)

    usr = sub.add_parser("user", help="add, remove and list the hall page's manager accounts")
    usub = usr.add_subparsers(dest="user_cmd", required=True, metavar="ACTION")
    ua = usub.add_parser("add", help="add an account; the password is read from stdin (or --password-file)")
    ua.add_argument("--users", required=True, type=Path, help="accounts file ([page] users), kept 0600")
    ua.add_argument("--name", required=True, help="log-in name, e.g. wang.li")
    ua.add_argument("--password-file", type=Path, default=None, help="read the password from this file")
    ua.add_argument("--replace", action="store_true", help="set a new password for an existing account")
    ua.set_defaults(func=_user_add)
    ur = usub.add_parser("remove", help="remove an account (its open sessions end at once)")
    ur.add_argument("--users", required=True, type=Path)
    ur.add_argument("--name", required=True)
    ur.set_defaults(func=_user_remove)
    ul = usub.add_parser("list", help="list the accounts (names and when they were added)")
    ul.add_argument("--users", required=True, type=Path)
    ul.set_defaults(func=_user_list)


def _run(args: argparse.Namespace) -> int:
    from countersign.common.sdnotify import Notifier

    from .config import GatewayConfig
    from .daemon import Daemon, remove_pid_file, write_pid_file
    from .gateway import Gateway

    daemon = Daemon(Notifier.from_env())
    try:
        cfg = GatewayConfig.load(args.config)
        gw = Gateway(cfg, on_fatal=daemon.on_fatal)
        if args.pid_file is not None:
            write_pid_file(args.pid_file)
    except (ConfigError, ProtocolError, OSError) as exc:
        print(f"countersign gateway: {exc}", file=sys.stderr)
        return 2

    def _on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        daemon.request_stop()

    def _on_hup(_signum: int, _frame: object) -> None:
        try:
            gw.reload_keystore()
        except ProtocolError as exc:
            log.error("keystore reload failed, keeping the old one: %s", exc)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_hup)
    try:
        return daemon.run(gw)
    finally:
        if args.pid_file is not None:
            remove_pid_file(args.pid_file)


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
    try:
        files = write_broker_files(args.out, ks, password, port=args.port, bind=args.bind,
                                   run_as=args.run_as, pid_file=args.pid_file)
    except (ProtocolError, OSError) as exc:     # e.g. an unknown --run-as user: nothing was written
        print(f"countersign gateway broker-config: {exc}", file=sys.stderr)
        return 2
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


def _windows_text(windows: frozenset[str] | None) -> str:
    return "*" if windows is None else ",".join(sorted(windows))


def _token_issue(args: argparse.Namespace) -> int:
    from countersign.protocol.keystore import FileOwner, write_atomic

    from .tokens import CredentialsError, issue, parse_windows

    if args.out.exists():
        print(f"countersign gateway token issue: {args.out} exists; choose another --out", file=sys.stderr)
        return 2
    try:
        windows = parse_windows(args.windows)
        owner = None if args.owner is None else FileOwner.parse(args.owner)
        token = issue(args.tokens, args.name, windows, owner=owner)
        write_atomic(args.out, token + "\n", mode=0o600)
    except (CredentialsError, ProtocolError, OSError) as exc:
        print(f"countersign gateway token issue: {exc}", file=sys.stderr)
        return 2
    print(f"issued {args.name} windows={_windows_text(windows)} token in {args.out}")
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from .tokens import CredentialsError, revoke

    try:
        e = revoke(args.tokens, args.name)
    except (CredentialsError, ProtocolError, OSError) as exc:
        print(f"countersign gateway token revoke: {exc}", file=sys.stderr)
        return 2
    print(f"revoked {e.name}")
    return 0


def _token_list(args: argparse.Namespace) -> int:
    import datetime

    from .tokens import CredentialsError, read_entries

    try:
        entries = read_entries(args.tokens)
    except CredentialsError as exc:
        print(f"countersign gateway token list: {exc}", file=sys.stderr)
        return 2

    def when(t: int | None) -> str:
        if t is None:
            return "-"
        return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%MZ")

    for e in entries:
        print(f"{e.name}\twindows={_windows_text(e.windows)}\tcreated={when(e.created)}\trevoked={when(e.revoked)}")
    return 0


def _user_add(args: argparse.Namespace) -> int:
    from .users import Users, UsersError

    try:
        if args.password_file is not None:
            text = args.password_file.read_text(encoding="utf-8")
        else:
            text = sys.stdin.readline()
        Users(args.users).add(args.name, text.rstrip("\r\n"), replace=args.replace)
    except (UsersError, OSError) as exc:
        print(f"countersign gateway user add: {exc}", file=sys.stderr)
        return 2
    print(f"user {args.name} added to {args.users}")
    return 0


def _user_remove(args: argparse.Namespace) -> int:
    from .users import Users, UsersError

    try:
        Users(args.users).remove(args.name)
    except (UsersError, OSError) as exc:
        print(f"countersign gateway user remove: {exc}", file=sys.stderr)
        return 2
    print(f"user {args.name} removed")
    return 0


def _user_list(args: argparse.Namespace) -> int:
    import datetime

    from .users import Users, UsersError

    try:
        accounts = Users(args.users).info()
    except UsersError as exc:
        print(f"countersign gateway user list: {exc}", file=sys.stderr)
        return 2
    for a in accounts:
        added = datetime.datetime.fromtimestamp(a["created_ms"] / 1000, datetime.UTC)
        print(f"{a['name']}\tadded={added:%Y-%m-%dT%H:%MZ}")
    return 0
