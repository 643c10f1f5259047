"""Size and count limits of the wire contract (PROTOCOL.md, section "Limits")."""

from __future__ import annotations

MAX_DEVICE_MESSAGE = 256        # bytes of one device<->gateway COSE_Mac0; a rating is under 100
MAX_DEVICE_PAYLOAD = 200        # bytes of the CBOR payload inside it
MAX_KID = 16                    # bytes of a device id
MAX_DEPTH = 4                   # nesting of arrays/maps (COSE array > payload map > ack array)
MAX_ITEMS = 64                  # elements of any one array or map in a device message
MAX_TEXT = 64                   # bytes of any text field (clerk id, txn id, firmware version)
MAX_ACK_SEQS = 32               # seqs acknowledged by one ack
# The largest MQTT PUBLISH body a keypad takes (topic + packet id + message: the firmware's _MAX_DOWN).
# A larger downlink is acked and discarded by the keypad, so the gateway never sends one.
MAX_DOWNLINK_PACKET = 300

MAX_BATCH_MESSAGE = 512 * 1024  # bytes of one gateway->province COSE_Sign1
MAX_BATCH_ENTRIES = 1000        # entries (ratings, no-ratings, prompt records) in one batch
MAX_BATCH_DEPTH = 6
