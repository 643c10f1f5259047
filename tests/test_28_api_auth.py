"""The counter API has an identity behind every call: bearer credentials issued and revoked with
`countersign gateway token`, bound to windows, logged by name, and TLS when a certificate is configured.

Against a real gateway (real mosquitto, SQLite, HTTP over loopback); the CLI runs as its own process.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import device_key, make_keystore
from gw_helpers import Device, client, http, rows, start_gateway, token_of, write_config

from countersign.gateway.apiclient import ApiCallError, CounterClient, read_token
from countersign.gateway.gateway import Gateway
from countersign.protocol import messages
from countersign.protocol.keystore import Keystore
from countersign.sim.broker import Mosquitto

A = "hf01-w01"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "countersign.cli", "gateway", "token", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def issue(tokens: Path, name: str, windows: str, out: Path) -> str:
    r = cli("issue", "--tokens", str(tokens), "--name", name, "--windows", windows, "--out", str(out))
    assert r.returncode == 0, r.stderr
    token = read_token(out)
    assert token not in r.stdout and token not in r.stderr
    return token


@pytest.fixture
def env(tmp_path: Path, hall_broker: Callable[[Keystore], Mosquitto]) -> Iterator[tuple[Gateway, Device]]:
    ks = make_keystore(devices=2)
    broker = hall_broker(ks)
    gw = start_gateway(write_config(tmp_path, ks, broker.port))
    a = Device(broker.port, A, device_key(1)).start()
    yield gw, a
    a.stop()
    gw.stop()


def snapshot(gw: Gateway) -> tuple[object, ...]:
    return (rows(gw, "SELECT * FROM sessions"), rows(gw, "SELECT * FROM prompts"))


def test_no_bad_or_revoked_credential_is_refused_and_changes_nothing(env: tuple[Gateway, Device],
                                                                       tmp_path: Path) -> None:
    gw, a = env
    assert gw.cfg.tokens_path is not None
    assert http(gw, "POST", "/v1/windows/1/signin", {"clerk": "10023", "name": "张三"})[0] == 200
    assert a.wait(lambda: any(s.clerk == "10023" for s in a.of_type(messages.Session)))
    pc = issue(gw.cfg.tokens_path, "counter-pc-1", "1", tmp_path / "pc1.token")
    assert http(gw.http_port, "GET", "/v1/status", token=pc)[0] == 200     # issued while running: valid
    assert cli("revoke", "--tokens", str(gw.cfg.tokens_path), "--name", "counter-pc-1").returncode == 0

    before, sessions_seen = snapshot(gw), len(a.of_type(messages.Session))
    for token in ("", "not-a-token", pc, token_of(gw.cfg) + "x"):
        for method, path, body in (("POST", "/v1/windows/1/signin", {"clerk": "99999"}),
                                   ("POST", "/v1/windows/1/signout", {}),
                                   ("POST", "/v1/windows/1/prompt", {"txn": "T-1", "service": 2}),
                                   ("GET", "/v1/status", None)):
            with pytest.raises(ApiCallError) as e:
                CounterClient(f"http://127.0.0.1:{gw.http_port}", token).call(method, path, body)
            assert e.value.status == 401, (token, path, e.value)
    assert snapshot(gw) == before
    assert len(a.of_type(messages.Session)) == sessions_seen and a.of_type(messages.Prompt) == []

    # The challenge a client needs to know what to send.
    import urllib.error
    import urllib.request
    with pytest.raises(urllib.error.HTTPError) as he:
        urllib.request.urlopen(f"http://127.0.0.1:{gw.http_port}/v1/status", timeout=10)
    assert he.value.code == 401 and he.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_window_bound_credential(env: tuple[Gateway, Device], tmp_path: Path) -> None:
    gw, _a = env
    assert gw.cfg.tokens_path is not None
    w1 = client(gw, issue(gw.cfg.tokens_path, "counter-pc-1", "1", tmp_path / "pc1.token"))
    before = snapshot(gw)
    for call in (lambda: w1.sign_in("2", "20001"), lambda: w1.sign_out("2"),
                 lambda: w1.open_prompt("2", "T-1", 2)):
        with pytest.raises(ApiCallError) as e:
            call()
        assert e.value.status == 403 and "window 2" in str(e.value)
    assert snapshot(gw) == before
    assert w1.sign_in("1", "10023")["clerk"] == "10023"
    assert w1.open_prompt("1", "T-1", 2)["prompt"] > 0


def test_every_call_logged_once_with_its_credential_never_the_token(
        env: tuple[Gateway, Device], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gw, _a = env
    assert gw.cfg.tokens_path is not None
    pc = issue(gw.cfg.tokens_path, "counter-pc-7", "*", tmp_path / "pc7.token")
    c = client(gw, pc)
    caplog.set_level(logging.INFO, logger="countersign.gateway.api")
    c.sign_in("1", "10023")
    with pytest.raises(ApiCallError):
        c.open_prompt("1", "T-1", 99)           # refused: logged all the same
    c.status()
    with pytest.raises(ApiCallError):
        CounterClient(c.base_url, "wrong-token").status()
    lines = [r.getMessage() for r in caplog.records if r.name == "countersign.gateway.api"]
    assert [ln.split(" -> ")[0] for ln in lines] == [
        "api counter-pc-7 POST /v1/windows/1/signin", "api counter-pc-7 POST /v1/windows/1/prompt",
        "api counter-pc-7 GET /v1/status", "api - GET /v1/status"]
    assert [ln.split(" -> ")[1][:3] for ln in lines] == ["200", "400", "200", "401"]
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert pc not in everything and "wrong-token" not in everything


def test_token_cli_files_and_output(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    out = tmp_path / "pc3.token"
    r = cli("issue", "--tokens", str(tokens), "--name", "counter-pc-3", "--windows", "3,4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    token = out.read_text().strip()
    assert len(token) >= 43
    assert "counter-pc-3" in r.stdout and "3,4" in r.stdout
    assert token not in r.stdout + r.stderr
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600 and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert token not in tokens.read_text()                       # stored hashed only
    assert json.loads(tokens.read_text())["credentials"][0]["windows"] == ["3", "4"]

    again = cli("issue", "--tokens", str(tokens), "--name", "counter-pc-3", "--windows", "*",
                "--out", str(tmp_path / "other.token"))
    assert again.returncode == 2 and "exists" in again.stderr
    clash = cli("issue", "--tokens", str(tokens), "--name", "x", "--windows", "1", "--out", str(out))
    assert clash.returncode == 2
    assert out.read_text().strip() == token                      # an existing token file is never replaced

    assert cli("revoke", "--tokens", str(tokens), "--name", "counter-pc-3").returncode == 0
    assert cli("revoke", "--tokens", str(tokens), "--name", "nobody").returncode == 2
    listed = cli("list", "--tokens", str(tokens))
    assert listed.returncode == 0
    assert "counter-pc-3" in listed.stdout and "windows=3,4" in listed.stdout
    assert "revoked=-" not in listed.stdout                      # revoked, with its time
    assert json.loads(tokens.read_text())["credentials"][0]["sha256"] not in listed.stdout


def test_no_credentials_configured_refuses_every_call(tmp_path: Path,
                                                      hall_broker: Callable[[Keystore], Mosquitto],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    ks = make_keystore(devices=1)
    broker = hall_broker(ks)
    caplog.set_level(logging.WARNING, logger="countersign.gateway.tokens")
    cfg = write_config(tmp_path, ks, broker.port)
    cfg.tokens_path = None
    gw = start_gateway(cfg)
    try:
        assert any("no credentials configured" in r.getMessage() for r in caplog.records)
        assert http(gw.http_port, "POST", "/v1/windows/1/signin", {"clerk": "10023"})[0] == 401
        assert http(gw.http_port, "GET", "/v1/status", token="anything")[0] == 401
        assert rows(gw, "SELECT * FROM sessions") == []
    finally:
        gw.stop()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "countersign test gateway")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "gateway.crt", tmp_path / "gateway.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_when_a_certificate_is_configured(tmp_path: Path,
                                              hall_broker: Callable[[Keystore], Mosquitto]) -> None:
    ks = make_keystore(devices=1)
    broker = hall_broker(ks)
    cert, key = _self_signed(tmp_path)
    cfg = write_config(tmp_path, ks, broker.port, http_cert=cert, http_key=key, http_header_timeout_s=1.0)
    gw = start_gateway(cfg)
    try:
        # A connection that never starts its TLS handshake is closed in header_timeout_s too.
        with socket.create_connection(("127.0.0.1", gw.http_port), timeout=5) as idle:
            t0 = time.monotonic()
            assert idle.recv(100) == b""
            assert time.monotonic() - t0 < 3
        base = f"https://127.0.0.1:{gw.http_port}"
        c = CounterClient(base, token_of(cfg), ca_file=cert)
        assert c.sign_in("1", "10023")["clerk"] == "10023"
        assert c.status()["hall"] == "hf01"
        with pytest.raises(ApiCallError) as e:        # a client that does not trust the certificate
            CounterClient(base, token_of(cfg)).status()
        assert e.value.status == 0 and "CERTIFICATE_VERIFY_FAILED" in str(e.value)
        with pytest.raises(ApiCallError):             # nor is plain HTTP answered as if it were fine
            CounterClient(f"http://127.0.0.1:{gw.http_port}", token_of(cfg)).status()
    finally:
        gw.stop()


def test_metrics_need_no_credential_and_show_no_clerk(env: tuple[Gateway, Device]) -> None:
    """/metrics stays open (scrapers, the technician's `device replace` waiting for the backlog to
    drain) because it holds counts only: no clerk id, no session."""
    import threading

    from countersign.device.replace import wait_forwarded

    gw, _a = env
    client(gw).sign_in("1", "10023", "张三")
    status, text = http(gw.http_port, "GET", "/metrics")
    assert status == 200 and 'countersign_gateway_backlog{hall="hf01"} 0' in text
    assert "10023" not in text and "张三" not in text
    assert wait_forwarded(f"http://127.0.0.1:{gw.http_port}", 5, threading.Event().wait)


def test_token_files_belong_to_the_gateways_user(tmp_path: Path) -> None:
    """Run as root, `token issue --owner` gives a new credentials file to the gateway's user, and a
    later revoke (as root) keeps it there: the gateway (User=countersign) can still read it."""
    import os
    import pwd

    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user (the production set-up runs it as root)")
    nobody = pwd.getpwnam("nobody")
    tokens = tmp_path / "tokens.json"
    r = cli("issue", "--tokens", str(tokens), "--name", "pc", "--windows", "1", "--out", str(tmp_path / "t"),
            "--owner", "nobody")
    assert r.returncode == 0, r.stderr
    assert (tokens.stat().st_uid, tokens.stat().st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert cli("revoke", "--tokens", str(tokens), "--name", "pc").returncode == 0
    st = tokens.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, 0o600)
    bad = cli("issue", "--tokens", str(tmp_path / "x.json"), "--name", "pc", "--windows", "1",
              "--out", str(tmp_path / "t2"), "--owner", "no-such-user")
    assert bad.returncode == 2 and "no such user" in bad.stderr
