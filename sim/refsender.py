"""The reference keypad's uplink of records: sealed, on flash before they are sent, sent again after a
reconnect and after the ack timeout, forgotten once the gateway acks them.

Not locked of its own: the keypad calls it under its lock.
"""

from __future__ import annotations

from collections.abc import Callable

from countersign.common.outbox import Outbox
from countersign.protocol import cose, messages


class Sender:
    def __init__(self, outbox: Outbox, key: bytes, kid: bytes, mono_ms: Callable[[], int],
                 ack_timeout_s: float, publish: Callable[[bytes], None],
                 on_resend: Callable[[], None]) -> None:
        self.outbox = outbox
        self._key, self._kid = key, kid
        self._mono_ms = mono_ms
        self._ack_timeout_ms = int(ack_timeout_s * 1000)
        self._publish, self._on_resend = publish, on_resend
        self._sent_at: dict[tuple[int, int], int] = {}      # mono ms of the last send; -1: an earlier boot's

    def seal(self, msg: messages.Message) -> bytes:
        return bytes(cose.mac0_encode(self._key, self._kid, msg.encode()))

    def keep_and_send(self, msg: messages.Rating | messages.NoRating, connected: bool) -> None:
        data = self.seal(msg)
        self.outbox.append(msg.epoch, msg.seq, data)   # fsynced: survives a power cut from here on
        if connected:
            self._send(msg.epoch, msg.seq, data)

    def resend_all(self) -> None:
        """After a (re)connect: everything not yet acked."""
        for it in self.outbox.items():
            if (it.epoch, it.seq) not in self._sent_at:
                self._sent_at[(it.epoch, it.seq)] = -1     # sent by an earlier boot: this is a resend
            self._send(it.epoch, it.seq, it.data)

    def resend_overdue(self) -> None:
        limit = self._mono_ms() - self._ack_timeout_ms
        for it in self.outbox.items():
            if self._sent_at.get((it.epoch, it.seq), -1) <= limit:
                self._send(it.epoch, it.seq, it.data)

    def acked(self, epoch: int, seqs: tuple[int, ...]) -> list[int]:
        """Forget what the gateway acked; the seqs that were still held."""
        done = self.outbox.ack(epoch, seqs)
        for s in done:
            self._sent_at.pop((epoch, s), None)
        return done

    def _send(self, epoch: int, seq: int, data: bytes) -> None:
        if (epoch, seq) in self._sent_at:
            self._on_resend()
        self._sent_at[(epoch, seq)] = self._mono_ms()
        self._publish(data)
