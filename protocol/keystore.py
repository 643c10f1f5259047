"""Key files: the hall gateway's device keystore and the province's key registry (both JSON).

Gateway keystore::

    {"hall": "hf01", "devices": {"hf01-w03": {"key": "<64 hex>", "epoch": 1, "window": "3",
                                             "scale": 4, "revoked": false}}}

Province registry::

    {"halls": {"hf01": {"public_key": "<64 hex Ed25519>"}},
     "devices": {"hf01-w03": {"hall": "hf01", "key": "<64 hex>", "epoch": 1, "revoked": false}}}

Files are replaced atomically (write-new-then-rename) so a crash never leaves a half-written keystore,
and keep their owner and group (``write_atomic``): the services reading them run as their own users.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import ProtocolError
from .topics import check_id


class KeystoreError(ProtocolError, ValueError):
    reason = "bad-keystore"


@dataclass
class DeviceKey:
    key: bytes
    epoch: int = 1
    window: str = ""
    scale: int = 4
    hall: str = ""
    revoked: bool = False

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["key"] = self.key.hex()
        return d

    @classmethod
    def from_json(cls, device: str, d: Any) -> DeviceKey:
        if not isinstance(d, dict):
            raise KeystoreError(f"device {device!r}: entry must be an object")
        try:
            key = bytes.fromhex(d["key"])
        except (KeyError, ValueError, TypeError) as exc:
            raise KeystoreError(f"device {device!r}: key must be 64 hex digits") from exc
        if len(key) != 32:
            raise KeystoreError(f"device {device!r}: key must be 32 bytes, got {len(key)}")
        epoch = d.get("epoch", 1)
        if not isinstance(epoch, int) or not 0 <= epoch <= 0xFFFF:
            raise KeystoreError(f"device {device!r}: epoch must be 0..65535")
        scale = d.get("scale", 4)
        if scale not in (4, 5):
            raise KeystoreError(f"device {device!r}: scale must be 4 or 5")
        return cls(key, epoch, str(d.get("window", "")), scale, str(d.get("hall", "")),
                   bool(d.get("revoked", False)))


@dataclass
class Keystore:
    """Device keys, shared shape for gateway (one hall) and province (all halls)."""

    hall: str = ""
    devices: dict[str, DeviceKey] = field(default_factory=dict)
    halls: dict[str, bytes] = field(default_factory=dict)   # hall id -> gateway Ed25519 public key

    def key_for(self, kid: bytes) -> bytes | None:
        """Key lookup for COSE verification; revoked or unknown devices have no key."""
        try:
            dk = self.devices.get(kid.decode("ascii"))
        except UnicodeDecodeError:
            return None
        return None if dk is None or dk.revoked else dk.key

    def gateway_public_key(self, kid: bytes) -> Ed25519PublicKey | None:
        raw = self.halls.get(kid.decode("ascii", "replace"))
        return None if raw is None else Ed25519PublicKey.from_public_bytes(raw)

    def add_device(self, device: str, dk: DeviceKey) -> None:
        self.devices[check_id(device)] = dk

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.hall:
            out["hall"] = self.hall
        if self.halls:
            out["halls"] = {h: {"public_key": k.hex()} for h, k in sorted(self.halls.items())}
        out["devices"] = {d: k.to_json() for d, k in sorted(self.devices.items())}
        return out

    @classmethod
    def from_json(cls, d: Any) -> Keystore:
        if not isinstance(d, dict) or not isinstance(d.get("devices", {}), dict):
            raise KeystoreError("keystore must be an object with a 'devices' object")
        ks = cls(hall=str(d.get("hall", "")))
        for dev, entry in d.get("devices", {}).items():
            try:
                check_id(dev)
            except ValueError as exc:
                raise KeystoreError(str(exc)) from exc
            ks.devices[dev] = DeviceKey.from_json(dev, entry)
        for hall, entry in d.get("halls", {}).items():
            try:
                ks.halls[check_id(hall, "hall id")] = bytes.fromhex(entry["public_key"])
            except (KeyError, ValueError, TypeError) as exc:
                raise KeystoreError(f"hall {hall!r}: public_key must be 64 hex digits") from exc
        return ks

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keystore:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise KeystoreError(f"cannot read keystore {path}: {exc}") from exc
        return cls.from_json(data)

    def save(self, path: str | os.PathLike[str], *, owner: FileOwner | None = None) -> None:
        """0640: the gateway reads the keystore as its own user through the file's group (see
        ``write_atomic`` for whose file it is)."""
        write_atomic(Path(path), json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n",
                     mode=SECRET_MODE, owner=owner)


# Secrets are never world-readable; the group bit lets a service's user read what root's tools write.
SECRET_MODE = 0o640


@dataclass(frozen=True)
class FileOwner:
    """Who a written file belongs to: the service that reads it, not whoever ran the tool."""

    uid: int
    gid: int

    @classmethod
    def parse(cls, spec: str) -> FileOwner:
        """``user`` (its primary group) or ``user:group``, names or numbers."""
        user, _, group = spec.partition(":")
        try:
            pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        except KeyError as exc:
            raise KeystoreError(f"no such user {user!r}") from exc
        if not group:
            return cls(pw.pw_uid, pw.pw_gid)
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError as exc:
            raise KeystoreError(f"no such group {group!r}") from exc
        return cls(pw.pw_uid, gid)


def write_atomic(path: Path, data: str | bytes, mode: int = 0o600, *,
                 owner: FileOwner | None = None) -> None:
    """Write-new-then-rename with fsync of file and folder: readers see the old file or the new one.

    The new file gets ``owner`` when given, else the old file's owner and group: a tool run as root that
    rewrites the broker's or the gateway's file must not take it away from the service reading it. When
    that owner cannot be kept (not root, someone else's file), nothing is replaced and the error says so.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if owner is None:
        try:
            st = path.stat()
        except FileNotFoundError:
            pass
        else:
            owner = FileOwner(st.st_uid, st.st_gid)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            mine = os.fstat(f.fileno())
            if owner is not None and (owner.uid, owner.gid) != (mine.st_uid, mine.st_gid):
                try:
                    os.fchown(f.fileno(), owner.uid, owner.gid)
                except PermissionError as exc:
                    raise KeystoreError(f"cannot write {path} as {owner.uid}:{owner.gid}, the owner its "
                                        f"readers need: {exc.strerror} (run as root or as that user)"
                                        ) from exc
            # After the chown, which may clear mode bits; before the rename, so no reader ever sees the
            # file with the wrong owner or mode.
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def new_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def load_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """A signing key file holds the 32-byte Ed25519 seed as 64 hex digits."""
    try:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(Path(path).read_text().strip()))
    except (OSError, ValueError) as exc:
        raise KeystoreError(f"cannot read signing key {path}: {exc}") from exc


def save_signing_key(path: str | os.PathLike[str], key: Ed25519PrivateKey, *,
                     owner: FileOwner | None = None) -> None:
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    write_atomic(Path(path), raw.hex() + "\n", mode=SECRET_MODE, owner=owner)


def mqtt_password(key: bytes) -> str:
    """A device's broker password, derived from its key so provisioning writes one secret, not two.

    HMAC-SHA256(key, "countersign mqtt password"), first 16 bytes, hex. The firmware computes the same.
    """
    import hashlib
    import hmac

    return hmac.new(key, b"countersign mqtt password", hashlib.sha256).digest()[:16].hex()
