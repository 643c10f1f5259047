"""MQTT topics and identifiers. The version segment ("1") changes only with an incompatible contract."""

from __future__ import annotations

import re

from .errors import ProtocolError

VERSION = "1"
PREFIX = f"cs/{VERSION}"

# Device ids and hall ids are MQTT usernames, topic segments and COSE kids at once, so they are kept to
# characters that are safe in all three (no '+', '#', '/', no leading '_' which marks service users).
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,15}$")
GATEWAY_USER = "_gateway"


class TopicError(ProtocolError, ValueError):
    reason = "bad-topic"


def check_id(value: str, what: str = "device id") -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise TopicError(f"{what} {value!r} must be 1-16 of a-z, 0-9 and '-', not starting with '-'")
    return value


def device_up(device: str) -> str:
    return f"{PREFIX}/d/{check_id(device)}/up"


def device_down(device: str) -> str:
    return f"{PREFIX}/d/{check_id(device)}/down"


def device_will(device: str) -> str:
    return f"{PREFIX}/d/{check_id(device)}/will"


DEVICE_UP_FILTER = f"{PREFIX}/d/+/up"
DEVICE_WILL_FILTER = f"{PREFIX}/d/+/will"


def hall_batch(hall: str) -> str:
    return f"{PREFIX}/h/{check_id(hall, 'hall id')}/batch"


def hall_ack(hall: str) -> str:
    return f"{PREFIX}/h/{check_id(hall, 'hall id')}/ack"


HALL_BATCH_FILTER = f"{PREFIX}/h/+/batch"
PROVINCE_SHARE_GROUP = "province"
PROVINCE_SHARED_FILTER = f"$share/{PROVINCE_SHARE_GROUP}/{HALL_BATCH_FILTER}"


def parse(topic: str) -> tuple[str, str, str]:
    """Split 'cs/1/d/<id>/up' into ('d', '<id>', 'up'); raise TopicError for anything else."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[2] not in ("d", "h"):
        raise TopicError(f"topic {topic!r} is not a Countersign topic")
    check_id(parts[3], "topic id")
    return parts[2], parts[3], parts[4]
