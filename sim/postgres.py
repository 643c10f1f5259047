"""Start and stop a real PostgreSQL server (Debian's binaries) for tests and benchmarks.

A throw-away cluster: ``initdb`` into a folder of its own, a free port on loopback, the socket in that
folder, trust authentication on loopback only (nothing else can reach it). PostgreSQL refuses to run as
root, so as root the cluster folder is given to the ``postgres`` user and every binary runs as that user
(``runuser``); the databases are created with a role named after the test.

pytest-postgresql does the same, but cannot switch users, and its process fixture would be one more
layer over four commands.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from types import TracebackType

from .broker import free_port

__all__ = ["PgError", "PgServer", "pg_bindir"]


class PgError(RuntimeError):
    pass


def pg_bindir() -> Path:
    """The newest installed server's bin folder (Debian: /usr/lib/postgresql/<major>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(n) if (n := Path(p).parent.parent.name).isdigit() else 0)
    if not found:
        raise PgError("PostgreSQL's server is not installed (make test installs Debian's postgresql)")
    return Path(found[-1]).parent


class PgServer:
    """``PgServer(folder).start()`` ... ``.stop()``; ``url(db)`` for psycopg, ``create_db(name)``."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.port = port or free_port()
        self.bindir = pg_bindir()
        self._as_postgres = os.geteuid() == 0
        self.user = "postgres" if self._as_postgres else pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/")
        if check and res.returncode != 0:
            raise PgError(f"{argv[0]} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
        return res

    def start(self) -> PgServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
            # runuser needs to reach the folder: every parent must be searchable by postgres.
            p = self.folder.parent
            while p != p.parent:
                if p.stat().st_mode & 0o001 == 0:
                    p.chmod(p.stat().st_mode | 0o001)
                p = p.parent
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8",
                      "--locale=C.UTF-8", "--no-sync")
        # fsync stays on (the default): the tests check what a commit promises.
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
                  " -c max_connections=200",
                  "start")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def create_db(self, name: str) -> str:
        """A new empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}"')
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def have_postgres() -> bool:
    try:
        pg_bindir()
    except PgError:
        return False
    return shutil.which("runuser") is not None or os.geteuid() != 0
