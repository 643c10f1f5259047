"""The province's registry of devices, in the database; hall public keys stay in the registry file.

The file (``registry.json``, written by ``countersign device provision|replace``) is imported into
``devices`` on start and on SIGHUP: a new device is added (source 'registry'), a newer epoch or a
revocation updates its row, and a row that came from an approved enrollment is never overwritten by the
file (the administrator's decision outranks a copied file). Workers build their Keystore from the file's
halls and the ``devices`` table, and look at a cheap fingerprint of the table on every commit group, so
a device approved by another process (or on another host) is used by the next batch.
"""

from __future__ import annotations

import logging

from countersign.protocol.keystore import DeviceKey, Keystore

from .db import Conn

log = logging.getLogger(__name__)

__all__ = ["Fingerprint", "fingerprint", "import_registry", "keystore"]

Fingerprint = tuple[int, int, int, int]


def import_registry(conn: Conn, file_registry: Keystore, now_ms: int, actor: str = "registry-file") -> int:
    """Bring the file's devices into ``devices`` in one transaction; return how many rows changed."""
    changed = 0
    with conn.transaction():
        for device, dk in sorted(file_registry.devices.items()):
            cur = conn.execute(
                'INSERT INTO devices (device, hall, key, epoch, "window", scale, revoked, source, changed_ms,'
                " changed_by) VALUES (?,?,?,?,?,?,?,'registry',?,?) ON CONFLICT (device) DO NOTHING",
                (device, dk.hall, dk.key, dk.epoch, dk.window, dk.scale, int(dk.revoked), now_ms, actor))
            if cur.rowcount == 1:
                changed += 1
                continue
            row = conn.one("SELECT source, epoch, revoked, key FROM devices WHERE device = ?", (device,))
            source, epoch, revoked, key = row[0], int(row[1]), bool(row[2]), bytes(row[3])
            if source != "registry":
                continue
            if dk.epoch > epoch:
                conn.execute('UPDATE devices SET hall = ?, key = ?, epoch = ?, "window" = ?, scale = ?,'
                             " revoked = ?, changed_ms = ?, changed_by = ? WHERE device = ?",
                             (dk.hall, dk.key, dk.epoch, dk.window, dk.scale, int(dk.revoked), now_ms, actor,
                              device))
                changed += 1
            elif dk.revoked and not revoked:
                # A revocation is one way: a file that forgets it never brings a revoked key back.
                conn.execute("UPDATE devices SET revoked = 1, changed_ms = ?, changed_by = ?"
                             " WHERE device = ?", (now_ms, actor, device))
                changed += 1
            elif dk.epoch == epoch and dk.key != key:
                log.warning("registry file: device %s epoch %d has another key than the database's;"
                            " the database's kept (a new key needs a new epoch)", device, epoch)
    return changed


def fingerprint(conn: Conn) -> Fingerprint:
    """Changes whenever a row of ``devices`` is added, re-keyed, revoked or re-approved."""
    row = conn.one("SELECT COUNT(*), COALESCE(MAX(changed_ms), 0), COALESCE(SUM(epoch), 0),"
                   " COALESCE(SUM(revoked), 0) FROM devices")
    return (int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def keystore(conn: Conn, halls: dict[str, bytes]) -> Keystore:
    """The receiver's Keystore: the given hall public keys and every device of the table."""
    ks = Keystore(halls=dict(halls))
    for device, hall, key, epoch, window, scale, revoked in conn.all(
            'SELECT device, hall, key, epoch, "window", scale, revoked FROM devices'):
        ks.devices[str(device)] = DeviceKey(bytes(key), int(epoch), str(window), int(scale), str(hall),
                                            bool(revoked))
    return ks
