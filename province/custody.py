"""One rating's chain of custody, as the rating page shows it: the keypad's MAC re-verified now with
the registry's key, the gateway batch it came in (its signature was verified when the province received
it: a batch that does not verify is never stored), the prompt it answers, and when each hop stored it."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from countersign.protocol import cose, messages
from countersign.protocol.errors import ProtocolError

from .db import Conn
from .ratings_list import service_name

__all__ = ["custody", "verify_mac"]


def _t(ms: int | None, tz: ZoneInfo) -> str:
    return "—" if ms is None else datetime.fromtimestamp(ms / 1000, tz).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def verify_mac(conn: Conn, device: str, cose_bytes: bytes, stored: dict[str, Any]) -> tuple[bool, str]:
    """(ok, what a person reads): the COSE_Mac0 checked now against the devices table's key, and its
    payload against the row as stored (a row altered after receipt no longer matches its MAC)."""
    row = conn.one("SELECT key, epoch, revoked FROM devices WHERE device = ?", (device,))
    if row is None:
        return False, "登记表中无此评价器的密钥 (no key for this keypad in the devices table)"
    key = bytes(row[0])
    try:
        v = cose.mac0_verify(cose_bytes, lambda kid: key if kid == device.encode() else None)
        msg = messages.decode_payload(v.payload)
    except ProtocolError as exc:
        return False, f"校验失败 verification failed: {exc.reason} ({exc})"
    want: dict[str, Any] = {"epoch": stored["epoch"], "seq": stored["seq"], "prompt": stored["prompt"],
                            "time": stored["press_s"]}
    if isinstance(msg, messages.Rating):
        want.update(score=stored["score"], scale=stored["scale"], kind="rating")
        got_kind = "rating"
    elif isinstance(msg, messages.NoRating):
        want["kind"] = "no-rating"
        got_kind = "no-rating"
    else:
        return False, f"签名内容不是评价 (the MACed message is a {type(msg).__name__}, not a rating)"
    if got_kind != stored["kind"]:
        return False, f"内容与存储不符 (the MACed message is a {got_kind}, stored as {stored['kind']})"
    for name, value in want.items():
        if name != "kind" and getattr(msg, name) != value:
            return False, (f"内容与存储不符 payload differs from the stored row: {name} "
                           f"{getattr(msg, name)!r} signed, {value!r} stored")
    note = "" if row[1] == stored["epoch"] else f" (key epoch {row[1]} now)"
    if row[2]:
        note += " (此评价器已停用 keypad revoked since)"
    return True, "已验证 verified" + note


def custody(conn: Conn, rating_id: int, tz: ZoneInfo) -> dict[str, Any]:
    """The rating's whole record (the caller has checked the user may see it)."""
    cols = ("id", "device", "epoch", "seq", "kind", "score", "scale", "prompt", "press_s", "delay_ms",
            "boot", "hall", "window", "clerk", "service", "txn", "prompt_ms", "received_ms", "stored_ms",
            "batch_hall", "batch_id", "cose", "day")
    select = ", ".join('"window"' if c == "window" else c for c in cols)
    row = conn.one(f"SELECT {select}"
                   " FROM ratings WHERE id = ?", (rating_id,))
    r = dict(zip(cols, row, strict=True))
    ok, mac = verify_mac(conn, r["device"], bytes(r["cose"]), r)
    batch = conn.one("SELECT created_ms, received_ms, entries FROM batches WHERE hall = ? AND batch = ?",
                     (r["batch_hall"], r["batch_id"]))
    prompt = None
    if r["prompt"] != 0:
        p = conn.one('SELECT opened_ms, timeout, device, "window", clerk, service, txn FROM prompts'
                     " WHERE hall = ? AND prompt = ?", (r["hall"], r["prompt"]))
        if p is not None:
            prompt = {"opened": _t(p[0], tz), "timeout_s": p[1], "device": p[2], "window": p[3],
                      "clerk": p[4], "service": service_name(p[5]), "txn": p[6]}
    scale_names = messages.SCORE_NAMES_ZH.get(r["scale"] or 0, {})
    return {
        **{k: v for k, v in r.items() if k != "cose"},
        "score_name": scale_names.get(r["score"], "未评价 no rating") if r["kind"] == "rating"
        else "未评价 no rating (超时 prompt expired)",
        "satisfied": r["kind"] == "rating" and messages.is_satisfied(r["score"], r["scale"]),
        "mac_ok": ok, "mac": mac,
        "batch": None if batch is None else {"created": _t(batch[0], tz), "received": _t(batch[1], tz),
                                             "entries": batch[2]},
        "press": "时间未知 time unknown" if r["press_s"] is None else _t(r["press_s"] * 1000, tz),
        "invite": r["prompt"] == 0, "prompt_row": prompt,
        "service_name": service_name(r["service"]),
        "prompt_at": _t(r["prompt_ms"], tz), "received": _t(r["received_ms"], tz),
        "stored": _t(r["stored_ms"], tz),
    }
