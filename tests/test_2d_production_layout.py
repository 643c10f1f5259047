"""The production layout, run for real: mosquitto dropped to the `mosquitto` user, the gateway as the
unprivileged `countersign` user, the broker config and keys written by the tools as root, a keypad
provisioned (which rewrites the broker's password file and the keystore) and its rating stored. Then the
owner and mode of every file the tools and services wrote, before and after a second provisioning.

These tests need root (to create the service users and to start processes as them); CI and the project's
machine run them as root. Not root is a failure with a message, never a skip: a skipped test here would
hide exactly the set-up the README documents.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import device_key
from gw_helpers import Device, rating

from countersign.common.brokerconf import BrokerFiles
from countersign.common.db import open_db
from countersign.device.hall import HallFiles, read_pid
from countersign.gateway.brokerconf import write_broker_files
from countersign.protocol.keystore import DeviceKey, FileOwner, Keystore, KeystoreError, write_atomic
from countersign.sim.broker import Mosquitto, free_port
from countersign.sim.proc import end

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
UNIT = REPO / "gateway" / "countersign-gateway.service"
GATEWAY_USER = "countersign"
BROKER_USER = "mosquitto"
HALL = "hf01"


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the production-layout tests run as root (they create the service users and start "
                    "mosquitto and the gateway as them): run them as root, as CI does")


def _ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


def _owner(p: Path) -> tuple[str, str, int]:
    st = p.stat()
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)


def _pretty(p: Path) -> str:
    u, g, m = _owner(p)
    return f"{p.name} {u}:{g} {m:04o}"


@dataclass
class Layout:
    root: Path          # 0755 all the way up: the service users must get through to their files
    etc: Path           # /etc/countersign: root:countersign, setgid 2750
    broker: Path        # /etc/mosquitto/conf.d/countersign
    state: Path         # /var/lib/countersign-gateway: countersign 0750 (the unit's StateDirectory)
    run: Path           # /run/countersign-gateway: countersign 0755 (the unit's RuntimeDirectory)

    @property
    def keystore(self) -> Path:
        return self.etc / "keystore.json"

    @property
    def registry(self) -> Path:
        return self.etc / "registry.json"

    @property
    def signing_key(self) -> Path:
        return self.etc / "hall-signing.key"

    @property
    def gateway_password(self) -> Path:
        return self.etc / "gateway-password"

    @property
    def db(self) -> Path:
        return self.state / "gateway.db"

    @property
    def pid_file(self) -> Path:
        return self.run / "gateway.pid"


@pytest.fixture
def layout() -> Iterator[Layout]:
    """An /etc-like and a state folder, laid out as the README tells hall IT to (pytest's tmp_path is
    0700 root's, which the service users could not enter)."""
    _need_root()
    gw = _ensure_user(GATEWAY_USER)
    _ensure_user(BROKER_USER)            # Debian's mosquitto package made it; created if not
    root = Path(tempfile.mkdtemp(prefix="cs-layout-", dir="/tmp"))
    try:
        root.chmod(0o755)
        etc = root / "etc" / "countersign"
        broker = root / "etc" / "mosquitto" / "conf.d" / "countersign"
        state = root / "var" / "lib" / "countersign-gateway"
        run = root / "run" / "countersign-gateway"
        for d in (etc, broker.parent, state, run):
            d.mkdir(parents=True)
        for d in root.rglob("*"):
            d.chmod(0o755)
        # The README's step: `install -d -o root -g countersign -m 2750 /etc/countersign`. The setgid bit
        # gives every file a tool creates there the countersign group; 0640 does the rest.
        os.chown(etc, 0, gw.pw_gid)
        etc.chmod(0o2750)
        os.chown(state, gw.pw_uid, gw.pw_gid)
        state.chmod(0o750)
        os.chown(run, gw.pw_uid, gw.pw_gid)
        yield Layout(root, etc, broker, state, run)
    finally:
        shutil.rmtree(root)


@pytest.fixture(autouse=True, scope="module")
def _checkout_reachable() -> Iterator[None]:
    """The service users run this checkout's code: every folder above it must let them pass (a clone in
    `mktemp -d`'s 0700 folder would not). Search permission only (o+x: nothing is listed), put back after."""
    changed: list[tuple[Path, int]] = []
    for d in [*REPO.parents, *Path(sysconfig.get_paths()["purelib"]).parents]:
        mode = d.stat().st_mode
        if d not in (p for p, _ in changed) and not mode & stat.S_IXOTH:
            changed.append((d, stat.S_IMODE(mode)))
            d.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
    try:
        yield
    finally:
        for d, mode in reversed(changed):
            d.chmod(mode)


def _as_user_python(user: str, code: str, *args: str) -> list[str]:
    """argv running ``code`` with this checkout's packages as ``user``.

    The venv's interpreter may live where a system user cannot reach it (a pyenv build under 0700
    /root); then the same minor version of the system's Python runs, given the venv's packages alone
    (-S: not the system's dist-packages, which could shadow them).
    """
    probe = subprocess.run(["runuser", "-u", user, "--", sys.executable, "-c", "pass"], capture_output=True,
                           timeout=60)
    if probe.returncode == 0:
        return ["runuser", "-u", user, "--", sys.executable, "-c", code, *args]
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        pytest.fail(f"the {user} user cannot run {sys.executable} ({probe.stderr.decode().strip()}) and "
                    f"there is no {system}: make the venv from a Python every user can run")
    boot = f"import site\nsite.addsitedir({sysconfig.get_paths()['purelib']!r})\n"
    return ["runuser", "-u", user, "--", str(system), "-S", "-c", boot + code, *args]


def _user_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUDO_", "XDG_"))}
    env.update(HOME="/nonexistent", PYTHONDONTWRITEBYTECODE="1")
    return env


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """A `countersign ...` command as hall IT types it (as root, the shell's usual umask)."""
    return subprocess.run([str(VENV_BIN / "countersign"), *argv], capture_output=True, text=True,
                          timeout=60)


class GatewayAsUser:
    """`countersign gateway run` as the countersign user, as the unit starts it."""

    def __init__(self, config: Path, pid_file: Path, log_path: Path) -> None:
        self.config, self.pid_file, self.log_path = config, pid_file, log_path
        self.proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self.lines: list[str] = []

    def start(self, timeout: float = 30.0) -> GatewayAsUser:
        self.proc = subprocess.Popen(
            _as_user_python(GATEWAY_USER, "import sys\nfrom countersign.cli import main\nsys.exit(main())",
                            "gateway", "run", "--config", str(self.config), "--pid-file", str(self.pid_file)),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_user_env())
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            pytest.fail("the gateway did not start as the countersign user:\n" + "".join(self.lines[-40:]))
        return self

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        if proc.stderr is None:
            return
        with open(self.log_path, "a", encoding="utf-8") as log:
            for line in proc.stderr:
                log.write(line)
                self.lines.append(line)
                if re.search(rf"gateway {HALL} ready http=\d+", line):
                    self._ready.set()
        self._ready.set()

    @property
    def pid(self) -> int:
        """From its pid file, as the technicians' tools read it."""
        try:
            return int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError) as exc:
            pytest.fail(f"no pid in {self.pid_file} ({exc}); gateway log:\n" + "".join(self.lines[-40:]))

    def stop(self) -> None:
        end(self.proc, grace=20)
        self.proc = None


def _gateway_config(lay: Layout, broker_port: int, uplink_port: int, province_key_hex: str) -> Path:
    cfg = lay.etc / "gateway.toml"
    cfg.write_text("\n".join([
        f'hall = "{HALL}"', f'db = "{lay.db}"', f'keystore = "{lay.keystore}"', "",
        "[broker]", 'host = "127.0.0.1"', f"port = {broker_port}",
        f'password_file = "{lay.gateway_password}"', "",
        # An uplink nobody answers: the gateway must still load the hall signing key as its own user.
        "[uplink]", 'host = "127.0.0.1"', f"port = {uplink_port}",
        f'password_file = "{lay.gateway_password}"',
        f'signing_key = "{lay.signing_key}"', f'province_public_key = "{province_key_hex}"', "",
        "[http]", 'bind = "127.0.0.1"', f"port = {free_port()}", "",
    ]) + "\n")
    cfg.chmod(0o640)
    return cfg


def _connect_keypad(port: int, dev: str, key: bytes, timeout: float = 15.0) -> Device:
    """The keypad logs in with its derived password; the broker re-reads passwd on SIGHUP in its own
    time, so a refusal right after provisioning is retried until the deadline."""
    deadline = threading.Event()
    timer = threading.Timer(timeout, deadline.set)
    timer.start()
    last = ""
    try:
        while not deadline.is_set():
            d = Device(port, dev, key)
            try:
                return d.start(timeout=5.0)
            except RuntimeError as exc:
                last = str(exc)
                d.stop()
                deadline.wait(0.2)
    finally:
        timer.cancel()
    pytest.fail(f"keypad {dev} could not log in to the broker running as mosquitto: {last}")


def _provision(lay: Layout, broker: Mosquitto, gw: GatewayAsUser, dev: str, n: int, window: str) -> bytes:
    """What `countersign device provision` does once the keypad holds its config (device/provision.py
    calls exactly this): register the key in keystore, registry, broker passwd and acl, SIGHUP both."""
    assert broker.proc is not None
    key = device_key(n)
    hall = HallFiles(lay.keystore, lay.registry, lay.broker, broker_pid=broker.proc.pid,
                     gateway_pid=gw.pid)
    done = hall.apply(add={dev: DeviceKey(key, 1, window, 4, HALL)})
    assert any(line.startswith("SIGHUP gateway") for line in done), done
    return key


def _stored(db: Path, dev: str) -> list[tuple[int, int]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT seq, score FROM ratings WHERE device = ? ORDER BY seq", (dev,)).fetchall()
    finally:
        conn.close()


def _send_and_see_stored(port: int, lay: Layout, dev: str, key: bytes, seq: int, score: int) -> None:
    d = _connect_keypad(port, dev, key)
    try:
        d.publish(rating(key, dev, seq, score=score))
        assert d.wait_acked({seq}, timeout=20), f"no signed ack for {dev} seq {seq}: not stored"
    finally:
        d.stop()
    assert (seq, score) in _stored(lay.db, dev)


def _modes(lay: Layout, files: BrokerFiles) -> dict[str, str]:
    wal, shm = lay.db.with_name("gateway.db-wal"), lay.db.with_name("gateway.db-shm")
    return {p.name: _pretty(p) for p in (files.passwd, files.acl, files.conf, files.passwd.parent / "data",
                                         lay.keystore, lay.registry, lay.signing_key, lay.gateway_password,
                                         lay.db, wal, shm)}


def test_production_layout_mosquitto_and_gateway_as_their_users(layout: Layout) -> None:
    lay = layout
    # Hall IT, as root: the gateway's broker password and the hall signing key, the empty keystore.
    fd = os.open(lay.gateway_password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    os.write(fd, b"gateway-secret-for-this-test\n")
    os.close(fd)
    Keystore(hall=HALL).save(lay.keystore)
    r = _cli("gateway", "keygen", "--out", str(lay.signing_key))
    assert r.returncode == 0, r.stderr
    broker_port = free_port()
    r = _cli("gateway", "broker-config", "--keystore", str(lay.keystore), "--out", str(lay.broker),
             "--port", str(broker_port), "--bind", "127.0.0.1",
             "--gateway-password-file", str(lay.gateway_password), "--run-as", BROKER_USER)
    assert r.returncode == 0, r.stderr
    files = BrokerFiles(lay.broker / "mosquitto.conf", lay.broker / "passwd", lay.broker / "acl")
    assert f"user {BROKER_USER}" in files.conf.read_text()

    # mosquitto as root, dropping to `mosquitto` by its config (as Debian's unit starts it).
    broker = Mosquitto(files.conf, broker_port, log_path=lay.root / "mosquitto.log").start()
    gw: GatewayAsUser | None = None
    try:
        gw = GatewayAsUser(_gateway_config(lay, broker_port, free_port(), "11" * 32), lay.pid_file,
                           lay.root / "gateway.log").start()
        assert pwd.getpwuid(os.stat(f"/proc/{gw.pid}").st_uid).pw_name == GATEWAY_USER

        key1 = _provision(lay, broker, gw, f"{HALL}-w01", 1, "1")
        _send_and_see_stored(broker_port, lay, f"{HALL}-w01", key1, 1, 4)

        before = _modes(lay, files)
        expected = {
            "passwd": f"passwd {BROKER_USER}:{BROKER_USER} 0640",
            "acl": f"acl {BROKER_USER}:{BROKER_USER} 0640",
            "data": f"data {BROKER_USER}:{BROKER_USER} 0750",
            "mosquitto.conf": "mosquitto.conf root:root 0644",
            "keystore.json": f"keystore.json root:{GATEWAY_USER} 0640",
            "registry.json": f"registry.json root:{GATEWAY_USER} 0640",
            "hall-signing.key": f"hall-signing.key root:{GATEWAY_USER} 0640",
            "gateway-password": f"gateway-password root:{GATEWAY_USER} 0640",
            "gateway.db": f"gateway.db {GATEWAY_USER}:{GATEWAY_USER} 0640",
            "gateway.db-wal": f"gateway.db-wal {GATEWAY_USER}:{GATEWAY_USER} 0640",
            "gateway.db-shm": f"gateway.db-shm {GATEWAY_USER}:{GATEWAY_USER} 0640",
        }
        assert before == expected

        # A second provisioning rewrites passwd, acl, keystore and registry as root: owners and modes stay,
        # so after a broker restart every login still works, the gateway's included.
        key2 = _provision(lay, broker, gw, f"{HALL}-w02", 2, "2")
        assert _modes(lay, files) == expected
        broker.stop()
        broker.start()
        _send_and_see_stored(broker_port, lay, f"{HALL}-w02", key2, 1, 1)
        _send_and_see_stored(broker_port, lay, f"{HALL}-w01", key1, 2, 3)
        assert gw.proc is not None and gw.proc.poll() is None, "".join(gw.lines[-40:])
        assert _modes(lay, files) == expected
    finally:
        if gw is not None:
            gw.stop()
        broker.stop()
    log = (lay.root / "mosquitto.log").read_text(errors="replace")
    assert "Unable to open" not in log and "Error" not in log, log[-2000:]


def test_broker_pid_file_is_what_the_tools_signal(layout: Layout) -> None:
    """`pid_file` in the generated config: mosquitto writes it (after dropping to `mosquitto`: its folder
    must be that user's), and the device tools' `--broker-pid-file` reads the broker's own pid from it."""
    pid_file = layout.root / "run" / "mosquitto" / "mosquitto.pid"
    pid_file.parent.mkdir()
    mq = pwd.getpwnam(BROKER_USER)
    os.chown(pid_file.parent, mq.pw_uid, mq.pw_gid)     # as Debian's mosquitto.service does (ExecStartPre)
    port = free_port()
    files = write_broker_files(layout.broker, Keystore(hall=HALL), "pw", port=port, bind="127.0.0.1",
                               run_as=BROKER_USER, pid_file=pid_file)
    assert f"pid_file {pid_file}" in files.conf.read_text()
    with Mosquitto(files.conf, port, log_path=layout.root / "mosquitto.log") as broker:
        assert broker.proc is not None
        assert read_pid(None, pid_file) == broker.proc.pid


def test_a_rewrite_keeps_the_old_files_owner_or_takes_the_one_given(layout: Layout) -> None:
    gw = pwd.getpwnam(GATEWAY_USER)
    p = layout.root / "secret"
    write_atomic(p, "one\n", mode=0o640)
    os.chown(p, gw.pw_uid, gw.pw_gid)
    write_atomic(p, "two\n", mode=0o640)                  # root rewrites the countersign user's file
    assert (_owner(p), p.read_text()) == ((GATEWAY_USER, GATEWAY_USER, 0o640), "two\n")
    write_atomic(p, "three\n", mode=0o600, owner=FileOwner.parse("root:mosquitto"))
    assert _owner(p) == ("root", BROKER_USER, 0o600)
    with pytest.raises(KeystoreError, match="no such user"):
        FileOwner.parse("no-such-user-here")


def test_rewrite_as_another_user_fails_and_leaves_the_file(layout: Layout) -> None:
    """Not root and not the owner: the tool says so and replaces nothing (it never silently hands the
    broker's password file to whoever ran it)."""
    d = layout.root / "shared"
    d.mkdir(mode=0o777)
    d.chmod(0o777)
    p = d / "passwd"
    p.write_text("old\n")
    p.chmod(0o640)
    code = ("import sys; from pathlib import Path; from countersign.protocol.keystore import write_atomic, "
            "KeystoreError\ntry:\n    write_atomic(Path(sys.argv[1]), 'new\\n', mode=0o640)\n"
            "except KeystoreError as e:\n    print(e); sys.exit(3)\n")
    r = subprocess.run(_as_user_python(GATEWAY_USER, code, str(p)), capture_output=True, text=True,
                       timeout=60, env=_user_env())
    assert r.returncode == 3, r.stdout + r.stderr
    assert "the owner its readers need" in r.stdout
    assert p.read_text() == "old\n" and _owner(p) == ("root", "root", 0o640)
    assert [q.name for q in d.iterdir()] == ["passwd"]    # no temp file left behind


def test_broker_config_unknown_run_as_user_writes_nothing(layout: Layout) -> None:
    out = layout.root / "broker-x"
    with pytest.raises(KeystoreError, match="no such user"):
        write_broker_files(out, Keystore(hall=HALL), "pw", port=1883, run_as="no-such-user-here")
    assert not out.exists()


def test_province_broker_config_unknown_run_as_user_is_one_line(layout: Layout) -> None:
    Keystore().save(layout.root / "registry.json")
    r = _cli("province", "broker-config", "--registry", str(layout.root / "registry.json"),
             "--out", str(layout.root / "pbroker"), "--province-password-file", str(layout.root / "p.pass"),
             "--hall-passwords", str(layout.root / "halls.json"), "--run-as", "no-such-user-here")
    assert (r.returncode, r.stderr.strip()) == (1, "broker-config: no such user 'no-such-user-here'")
    assert not (layout.root / "pbroker").exists()


def test_databases_are_created_and_kept_not_world_readable(layout: Layout) -> None:
    old = os.umask(0)                # the most permissive umask: the mode must not come from it
    try:
        db = layout.root / "new.db"
        conn = open_db(db)
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        for p in (db, db.with_name("new.db-wal"), db.with_name("new.db-shm")):
            assert stat.S_IMODE(p.stat().st_mode) == 0o640, _pretty(p)
        conn.close()
        legacy = layout.root / "legacy.db"
        sqlite3.connect(legacy).close()
        legacy.chmod(0o644)          # what the gateway made before
        open_db(legacy).close()
        assert stat.S_IMODE(legacy.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def _unit_keys(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    cur: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            cur = sections.setdefault(line.strip("[]"), {})
        else:
            k, _, v = line.partition("=")
            cur[k.strip()] = v.strip()
    return sections


def test_gateway_unit_verifies_and_has_the_production_keys(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: install Debian's systemd package (make test does)")
    # verify checks that ExecStart's program exists: point it at this checkout's, in a copy.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/countersign", str(VENV_BIN / "countersign")))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # An unknown or misspelt key is only a warning to systemd (exit 0): any output is a failure here.
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr
    svc = _unit_keys(UNIT.read_text())["Service"]
    assert {k: svc.get(k) for k in ("Type", "NotifyAccess", "WatchdogSec", "User", "UMask", "LimitNOFILE",
                                    "RuntimeDirectory", "StateDirectory")} == {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30", "User": GATEWAY_USER,
        "UMask": "0027", "LimitNOFILE": "8192", "RuntimeDirectory": "countersign-gateway",
        "StateDirectory": "countersign-gateway"}
    assert svc["ExecStart"].endswith("--pid-file /run/countersign-gateway/gateway.pid")


def test_not_root_is_a_failure_with_a_message() -> None:
    """The guard itself: run as the countersign user, the fixture's check fails, it does not skip."""
    _need_root()
    _ensure_user(GATEWAY_USER)
    code = ("import sys\nsys.path.insert(0, sys.argv[1])\nimport pytest\n"
            "import test_2d_production_layout as t\n"
            "try:\n    t._need_root()\nexcept pytest.fail.Exception as e:\n    print('FAILED', e)\n"
            "    sys.exit(0)\nsys.exit(4)\n")
    r = subprocess.run(_as_user_python(GATEWAY_USER, code, str(Path(__file__).parent)), capture_output=True,
                       text=True, timeout=60, env=_user_env())
    assert r.returncode == 0 and "FAILED" in r.stdout and "run them as root" in r.stdout, r.stdout + r.stderr

