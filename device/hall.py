"""Registering and revoking keypads in the hall's files: gateway keystore, province registry, broker.

One call, ``HallFiles.apply(add=..., revoke=...)``, makes every change of a provisioning or replacement
in each file at once (each written new-then-rename by ``protocol.keystore.write_atomic``), in this order:
the gateway keystore, the province registry, the broker's passwd and acl; then SIGHUP to mosquitto
(re-reads passwd/acl) and to the gateway (re-reads its keystore; gateway/cli.py), when their pids are
known. The callers call it only after the keypad itself holds its new config, so no file ever lists a
keypad whose provisioning failed.

With ``enrollment_dir`` each added keypad also gets the technician's enrollment record there (right after
the gateway keystore: enrollment.py), the file the platform's administrator uploads and approves. A
direct ``registry`` write is the shortcut for a single small deployment or the demo: the province takes
a device in its registry file as approved at once.

The broker's passwd file is rebuilt from the keystore: one ``$7$`` line per keypad that is not revoked
(``common.brokerconf.password_hash`` of ``mqtt_password(key)``); the lines of service users that are not
keypads (the gateway's, the observer's) are kept as they are, so the tool never needs the gateway's
password. With ``gateway_password_file`` the file is regenerated whole by
``common.brokerconf.hall_passwd_text``.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from countersign.common.brokerconf import OBSERVER_USER, hall_acl_text, hall_passwd_text, password_hash
from countersign.protocol.keystore import (
    DeviceKey,
    FileOwner,
    Keystore,
    KeystoreError,
    mqtt_password,
    write_atomic,
)

from .errors import DeviceToolError


@dataclass
class HallFiles:
    keystore: Path                          # the hall gateway's keystore JSON
    registry: Path | None = None            # the province's key registry JSON
    broker_dir: Path | None = None          # the hall broker's folder (passwd, acl)
    broker_pid: int | None = None
    gateway_pid: int | None = None
    gateway_password_file: Path | None = None
    enrollment_dir: Path | None = None      # where the technician's enrollment records go
    technician: str | None = None           # who provisions (default: the unix user)

    def load(self) -> Keystore:
        try:
            return Keystore.load(self.keystore)
        except KeystoreError as exc:
            raise DeviceToolError(str(exc)) from exc

    def apply(self, add: dict[str, DeviceKey] | None = None, revoke: list[str] | None = None) -> list[str]:
        """Add (or re-key) ``add`` and revoke ``revoke`` everywhere; returns what was done, one line each."""
        try:
            return self._apply(add, revoke)
        except KeystoreError as exc:        # a file that cannot keep its owner, or a damaged registry
            raise DeviceToolError(str(exc)) from exc

    def _apply(self, add: dict[str, DeviceKey] | None, revoke: list[str] | None) -> list[str]:
        add = add or {}
        revoke = revoke or []
        done: list[str] = []
        ks = self.load()
        for dev in revoke:
            if dev in ks.devices:
                ks.devices[dev].revoked = True
        for dev, dk in add.items():
            ks.add_device(dev, dk)
        ks.save(self.keystore)
        done.append(f"gateway keystore {self.keystore}: " + _what(add, revoke))
        if self.enrollment_dir is not None:
            from .enrollment import write_record

            for dev, dk in add.items():
                path = write_record(self.enrollment_dir, dev, dk, ks.hall or "", self.technician)
                done.append(f"enrollment record {path} (0600, it holds the key: give it to the platform's"
                            " administrator by your own channel, never through the hall gateway)")
        if self.registry is not None:
            reg = Keystore.load(self.registry) if self.registry.exists() else Keystore()
            for dev in revoke:
                if dev in reg.devices:
                    reg.devices[dev].revoked = True
            for dev, dk in add.items():
                reg.devices[dev] = DeviceKey(dk.key, dk.epoch, dk.window, dk.scale, dk.hall or ks.hall)
            reg.save(self.registry)
            done.append(f"province registry {self.registry}: " + _what(add, revoke))
        if self.broker_dir is not None:
            self._write_broker(ks)
            done.append(f"broker passwd/acl in {self.broker_dir}")
        for name, pid in (("mosquitto", self.broker_pid), ("gateway", self.gateway_pid)):
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGHUP)
                except ProcessLookupError as exc:
                    raise DeviceToolError(f"files written, but there is no {name} process {pid} to "
                                          "reload them (SIGHUP it by hand)") from exc
                done.append(f"SIGHUP {name} (pid {pid})")
        return done

    def _write_broker(self, ks: Keystore) -> None:
        if self.broker_dir is None:
            raise DeviceToolError("no broker folder to write the passwd and acl into")
        passwd = self.broker_dir / "passwd"
        if self.gateway_password_file is not None:
            text = hall_passwd_text(ks, self.gateway_password_file.read_text().strip())
            observer = False
        else:
            try:
                old = passwd.read_text().splitlines()
            except OSError as exc:
                raise DeviceToolError(f"cannot read the broker's password file {passwd}: {exc}") from exc
            keep = [ln for ln in old if ln.strip() and ln.split(":", 1)[0] not in ks.devices]
            lines = keep + [f"{dev}:{password_hash(mqtt_password(dk.key))}"
                            for dev, dk in sorted(ks.devices.items()) if not dk.revoked]
            text = "\n".join(lines) + "\n"
            observer = any(ln.split(":", 1)[0] == OBSERVER_USER for ln in keep)
        # write_atomic keeps passwd's owner (the broker's user, set by `broker-config --run-as`): a
        # provisioning run as root must not leave the broker unable to read it on the SIGHUP below. The
        # acl follows passwd, even if it was missing.
        write_atomic(passwd, text, mode=0o640)
        st = passwd.stat()
        write_atomic(self.broker_dir / "acl", hall_acl_text(observer), mode=0o640,
                     owner=FileOwner(st.st_uid, st.st_gid))


def _what(add: dict[str, DeviceKey], revoke: list[str]) -> str:
    parts = [f"added {d} (window {k.window}, epoch {k.epoch})" for d, k in add.items()]
    parts += [f"revoked {d}" for d in revoke]
    return ", ".join(parts) or "unchanged"


def read_pid(value: str | None, pid_file: Path | None) -> int | None:
    if value is not None:
        try:
            return int(value)
        except ValueError as exc:
            raise DeviceToolError(f"not a process id: {value!r}") from exc
    if pid_file is not None:
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError) as exc:
            raise DeviceToolError(f"cannot read a pid from {pid_file}: {exc}") from exc
    return None
