"""One exception tree for the wire contract.

Every error carries a short machine-readable ``reason`` (used as the quarantine reason, the metrics label
and the ``countersign decode`` exit message) and also subclasses the builtin a caller would expect, so
``except ValueError`` keeps working for code that does not know this tree.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every wire-contract error."""

    reason = "protocol-error"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class DecodeError(ProtocolError, ValueError):
    """The bytes are not well-formed CBOR within the profile's limits."""

    reason = "malformed-cbor"


class LimitError(DecodeError):
    """Well-formed perhaps, but past a size, depth or count limit."""

    reason = "over-limit"


class CoseError(ProtocolError, ValueError):
    """Well-formed CBOR but not a COSE message of the profile's shape."""

    reason = "bad-cose-structure"


class VerifyError(ProtocolError, ValueError):
    """A MAC or signature does not verify, or the key id does not match what it must."""

    reason = "bad-mac"


class UnknownKeyError(VerifyError, LookupError):
    """No key is registered (or it is revoked) for the key id in the message."""

    reason = "unknown-device"


class SchemaError(ProtocolError, ValueError):
    """The payload decodes but a field is missing, of the wrong type or out of range."""

    reason = "bad-field"
