"""The hall broker's mosquitto configuration, generated from the gateway keystore.

The hardening, the password file and the hall's users and ACL are common/brokerconf.py's (the
technicians' tools rewrite the same passwd and acl when a keypad is added or revoked). What is the
gateway's here: the packet-size limit of a hall broker and the command that writes its folder.

An optional read-only observer user (``_observer``, ``observer_password=``) lets a traffic capture
(``countersign.sim.capture``) watch the broker without logging in as the gateway, which would kick the
gateway off (``use_username_as_clientid``). Production configs have none: the default is no observer.
"""

from __future__ import annotations

from pathlib import Path

from countersign.common.brokerconf import (
    OBSERVER_USER,
    BrokerFiles,
    hall_acl_text,
    hall_passwd_text,
    write_broker_dir,
)
from countersign.protocol.keystore import Keystore

__all__ = ["HALL_MAX_PACKET", "OBSERVER_USER", "BrokerFiles", "write_broker_files"]

# Larger than any good message (256 bytes) so the gateway, not the broker, sees and counts an oversized
# one; small enough that a flood of huge packets is cut off at the broker.
HALL_MAX_PACKET = 4096


def write_broker_files(out_dir: Path, keystore: Keystore, gateway_password: str, *, port: int,
                       bind: str = "0.0.0.0", run_as: str | None = None,
                       persistence: bool = True, observer_password: str | None = None,
                       pid_file: Path | None = None) -> BrokerFiles:
    """Write mosquitto.conf, passwd and acl into ``out_dir`` for the hall broker.

    ``observer_password``: when given, adds the read-only ``_observer`` user (traffic capture in the
    simulator and tests). None, the default and the production setting, adds no such user.
    ``run_as``: the user mosquitto drops to; passwd, acl and data/ become that user's (0640, 0750).
    ``pid_file``: where mosquitto writes its pid, for the technicians' tools to SIGHUP it.
    """
    return write_broker_dir(
        out_dir, passwd=hall_passwd_text(keystore, gateway_password, observer_password),
        acl=hall_acl_text(observer_password is not None),
        title="the hall broker. Regenerate with `countersign gateway broker-config`.",
        port=port, bind=bind, run_as=run_as, persistence=persistence, max_packet_size=HALL_MAX_PACKET,
        pid_file=pid_file)
