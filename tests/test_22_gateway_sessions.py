"""Clerk sessions and prompts through the local HTTP API bind each rating to its context."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import device_key, make_keystore
from gw_helpers import Device, http, no_rating, rating, rows, start_gateway, write_config

from countersign.gateway.gateway import Gateway
from countersign.protocol import messages
from countersign.protocol.keystore import Keystore
from countersign.sim.broker import Mosquitto

A, B = "hf01-w01", "hf01-w02"
KA, KB = device_key(1), device_key(2)


@pytest.fixture
def env(tmp_path: Path,
        hall_broker: Callable[[Keystore], Mosquitto]) -> Iterator[tuple[Gateway, Device, Device]]:
    ks = make_keystore(devices=2)
    broker = hall_broker(ks)
    gw = start_gateway(write_config(tmp_path, ks, broker.port))
    a, b = Device(broker.port, A, KA).start(), Device(broker.port, B, KB).start()
    yield gw, a, b
    a.stop()
    b.stop()
    gw.stop()


def context_rows(gw: Gateway) -> list[tuple[object, ...]]:
    return rows(gw, "SELECT device, seq, kind, score, prompt, window, clerk, clerk_name, service, txn,"
                    " prompt_ms IS NOT NULL FROM ratings ORDER BY seq")


def test_signin_prompt_rating_carries_context(env: tuple[Gateway, Device, Device]) -> None:
    gw, a, _b = env
    assert http(gw, "POST", "/v1/windows/1/signin", {"clerk": "10023", "name": "张三"})[0] == 200
    assert a.wait(lambda: any(s.clerk == "10023" for s in a.of_type(messages.Session)))
    assert a.of_type(messages.Session)[-1].clerk_name == "张三"
    status, body = http(gw, "POST", "/v1/windows/1/prompt", {"txn": "T-1", "service": 2, "timeout": 15})
    assert status == 200, body
    pid = body["prompt"]
    assert a.wait(lambda: bool(a.of_type(messages.Prompt)))     # MAC verified by the Device helper
    p = a.of_type(messages.Prompt)[0]
    assert (p.prompt, p.clerk, p.service, p.txn, p.timeout) == (pid, "10023", 2, "T-1", 15)

    a.publish(rating(KA, A, 1, score=1, prompt=pid))
    assert a.wait_acked({1})
    assert context_rows(gw) == [(A, 1, "rating", 1, pid, "1", "10023", "张三", 2, "T-1", 1)]

    # second rating for the same prompt: quarantined, still acked so the keypad's outbox drains
    a.publish(rating(KA, A, 2, score=4, prompt=pid))
    assert a.wait_acked({1, 2})
    assert gw.store.quarantine_counts() == {"prompt-already-rated": 1}
    assert len(context_rows(gw)) == 1

    # a prompt that was opened for A, answered by B: refused
    _b = env[2]
    status, body = http(gw, "POST", "/v1/windows/1/prompt", {"txn": "T-2", "service": 3})
    assert status == 200
    _b.publish(rating(KB, B, 1, prompt=body["prompt"]))
    assert _b.wait_acked({1})
    assert gw.store.quarantine_counts() == {"prompt-already-rated": 1, "prompt-mismatch": 1}

    # the prompt times out on the keypad: a no-rating, never a default score
    a.publish(no_rating(KA, A, 3, prompt=body["prompt"]))
    assert a.wait_acked({1, 2, 3})
    last = context_rows(gw)[-1]
    assert last == (A, 3, "no-rating", None, body["prompt"], "1", "10023", "张三", 3, "T-2", 1)


def test_invite_key_rating_binds_signed_in_clerk(env: tuple[Gateway, Device, Device]) -> None:
    gw, _a, b = env
    assert http(gw, "POST", "/v1/windows/2/signin", {"clerk": "20001"})[0] == 200
    b.publish(rating(KB, B, 1, score=4, prompt=0))
    assert b.wait_acked({1})
    assert http(gw, "POST", "/v1/windows/2/signout")[0] == 200
    assert b.wait(lambda: b.of_type(messages.Session)[-1].clerk is None)
    b.publish(rating(KB, B, 2, score=3, prompt=0))      # window closed: no clerk, still stored
    assert b.wait_acked({1, 2})
    assert context_rows(gw) == [(B, 1, "rating", 4, 0, "2", "20001", "李四", 0, None, 0),
                                (B, 2, "rating", 3, 0, "2", None, None, 0, None, 0)]


def test_bad_api_input_is_4xx_and_changes_nothing(env: tuple[Gateway, Device, Device]) -> None:
    gw, a, _b = env

    def snapshot() -> tuple[object, ...]:
        return (rows(gw, "SELECT * FROM prompts"), rows(gw, "SELECT * FROM sessions"),
                rows(gw, "SELECT count(*) FROM uplink_entries"))

    before = snapshot()
    cases = [
        ("POST", "/v1/windows/1/prompt", {"txn": "T-1", "service": 2}, 409),        # nobody signed in
        ("POST", "/v1/windows/9/signin", {"clerk": "1"}, 404),                     # unknown window
        ("POST", "/v1/windows/1/signin", {}, 400),
        ("POST", "/v1/windows/1/signin", {"clerk": ""}, 400),
        ("POST", "/v1/windows/1/signin", {"clerk": 10023}, 400),
        ("POST", "/v1/windows/1/signin", {"clerk": "x" * 65}, 400),
        ("POST", "/v1/windows/1/signin", {"clerk": "1", "extra": 1}, 400),
        ("POST", "/v1/windows/1/signin", b"{not json", 400),
        ("POST", "/v1/windows/1/signin", b"[1, 2]", 400),
        ("POST", "/v1/windows/1/nothing", {}, 404),
        ("GET", "/v1/nothing", None, 404),
    ]
    for method, path, body, want in cases:
        status, out = http(gw, method, path, body)
        assert status == want, (path, body, out)
        assert "error" in out
    assert snapshot() == before
    assert http(gw, "POST", "/v1/windows/1/signin", {"clerk": "10023"})[0] == 200
    before = snapshot()
    for body in ({"txn": "T", "service": 0}, {"txn": "T", "service": 99}, {"txn": "T", "service": "2"},
                 {"txn": "T", "service": 2, "timeout": 9}, {"txn": "T", "service": 2, "timeout": 31},
                 {"txn": "T", "service": 2, "timeout": True}, {"service": 2}, {"txn": "", "service": 2}):
        status, out = http(gw, "POST", "/v1/windows/1/prompt", body)
        assert status == 400, (body, out)
    assert snapshot() == before
    assert a.of_type(messages.Prompt) == []


def test_status_and_metrics(env: tuple[Gateway, Device, Device]) -> None:
    gw, a, _b = env
    a.publish(rating(KA, A, 1))
    assert a.wait_acked({1})
    status, st = http(gw, "GET", "/v1/status")
    assert status == 200
    assert st["hall"] == "hf01" and st["devices"][A]["online"] and not st["devices"][B]["online"]
    assert st["counts"]["stored"] == 1 and st["alarms"] == []
    status, text = http(gw, "GET", "/metrics")
    assert status == 200
    assert 'countersign_gateway_stored_total{hall="hf01"} 1' in text
    assert 'countersign_gateway_devices_online{hall="hf01"} 1' in text


def test_prompt_and_rating_forwarded_with_context(tmp_path: Path,
                                                  hall_broker: Callable[[Keystore], Mosquitto]) -> None:
    """Gateway with an uplink: the prompt record and the rating (device bytes unchanged, with its
    context) reach the province in signed batches, and the province's ack empties the backlog."""
    import test_24_gateway_forward as t24  # its provincial broker and scripted peer

    from countersign.gateway import forward as fwd
    from countersign.protocol import batch
    from countersign.protocol.keystore import new_signing_key, public_bytes, save_signing_key

    uplink = t24.Uplink(tmp_path / "province-broker")
    uplink.start()
    hall_key, province_key = new_signing_key(), new_signing_key()
    save_signing_key(tmp_path / "hall.key", hall_key)
    peer = t24.ProvincePeer(uplink.port, {"hf01": hall_key.public_key()}, province_key).start()
    ks = make_keystore(devices=1)
    broker = hall_broker(ks)
    cfg = write_config(tmp_path, ks, broker.port, uplink_host="127.0.0.1", uplink_port=uplink.port,
                       uplink_password=t24.HALL_PASSWORD, signing_key_path=tmp_path / "hall.key",
                       province_public_key=public_bytes(province_key).hex(), retry_s=0.5)
    gw = start_gateway(cfg)
    a = Device(broker.port, A, KA).start()
    try:
        assert isinstance(gw.forwarder, fwd.Forwarder)
        assert http(gw, "POST", "/v1/windows/1/signin", {"clerk": "10023"})[0] == 200
        pid = http(gw, "POST", "/v1/windows/1/prompt", {"txn": "T-9", "service": 4})[1]["prompt"]
        msg = rating(KA, A, 1, score=2, prompt=pid)
        a.publish(msg)
        assert a.wait_acked({1})

        def entries() -> list[batch.Entry]:
            return [e for d in peer.deliveries for e in d.batch.entries]
        # The gateway's own reports (keypad status, ...) travel too: wait for these two kinds.
        assert peer.wait(lambda p: {"PromptEntry", "DeviceEntry"} <= {type(e).__name__ for e in entries()})
        by_kind = {type(e).__name__: e for e in entries()}
        p_entry, d_entry = by_kind["PromptEntry"], by_kind["DeviceEntry"]
        assert (p_entry.prompt, p_entry.device, p_entry.ctx.clerk, p_entry.ctx.service, p_entry.ctx.txn) == \
            (pid, A, "10023", 4, "T-9")
        assert d_entry.msg == msg
        assert (d_entry.ctx.window, d_entry.ctx.clerk, d_entry.ctx.service, d_entry.ctx.txn) == \
            ("1", "10023", 4, "T-9")
        assert gw.forwarder.wait_until(lambda f: f.backlog() == 0, 20)
        assert gw.stats()["backlog"] == 0 and gw.status()["backlog"] == 0
    finally:
        a.stop()
        gw.stop()
        peer.stop()
        uplink.stop()
