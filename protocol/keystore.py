"""Key files: the hall gateway's device keystore and the province's key registry (both JSON).

Gateway keystore::

    {"hall": "hf01", "devices": {"hf01-w03": {"key": "<64 hex>", "epoch": 1, "window": "3",
                                             "scale": 4, "revoked": false}}}

Province registry::

    {"halls": {"hf01": {"public_key": "<64 hex Ed25519>"}},
     "devices": {"hf01-w03": {"hall": "hf01", "key": "<64 hex>", "epoch": 1, "revoked": false}}}

Files are replaced atomically (write-new-then-rename) so a crash never leaves a half-written keystore.
"""

from __future__ import annotations

import json
import os
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

    def save(self, path: str | os.PathLike[str]) -> None:
        write_atomic(Path(path), json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n")


def write_atomic(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Write-new-then-rename with fsync of file and folder: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
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


def save_signing_key(path: str | os.PathLike[str], key: Ed25519PrivateKey) -> None:
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    write_atomic(Path(path), raw.hex() + "\n")


def mqtt_password(key: bytes) -> str:
    """A device's broker password, derived from its key so provisioning writes one secret, not two.

    HMAC-SHA256(key, "countersign mqtt password"), first 16 bytes, hex. The firmware computes the same.
    """
    import hashlib
    import hmac

    return hmac.new(key, b"countersign mqtt password", hashlib.sha256).digest()[:16].hex()
