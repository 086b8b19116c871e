"""The ``hark-backend`` command as an operator runs it, and a whole logged run of ``serve``."""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hark_backend.cli import (
    EX_CONFIG,
    EX_UNAVAILABLE,
    ConfigError,
    build_parser,
    read_openai_key,
)
from hark_backend.registry import RateLimit

from tests.backend.servers import HAVE_SIM, FakeUpstream, ServerThread, exchange, parse

MINT = "/v1/realtime/client_secrets"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hark_backend ARGS`` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "hark_backend", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_device_add_prints_the_token_last(sqlite_url: str) -> None:
    """``device add`` prints the token once, as the last line; a duplicate exits 1."""
    done = cli("device", "add", "kitchen", "--group", "house", "--db", sqlite_url)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"hark_dt_[A-Za-z0-9_-]{43,}", token)
    again = cli("device", "add", "kitchen", "--db", sqlite_url)
    assert again.returncode == 1
    assert "already exists" in again.stderr


def test_device_names_with_a_newline_are_refused(sqlite_url: str) -> None:
    """``device add $'kitchen\\n'`` and ``--group $'kids\\n'`` are refused, saying why."""
    assert cli("device", "add", "kitchen", "--group", "kids", "--db", sqlite_url).returncode == 0
    for args in (("kitchen\n",), ("hall", "--group", "kids\n")):
        done = cli("device", "add", *args, "--db", sqlite_url)
        assert done.returncode == 1, done.stdout
        assert "hark_dt_" not in done.stdout
        bad = args[-1]
        assert f"invalid name {bad!r}" in done.stderr
        assert "letters, digits" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    names = json.loads(cli("device", "list", "--json", "--db", sqlite_url).stdout)
    assert [(d["name"], d["group"]) for d in names] == [("kitchen", "kids")]


def test_device_add_by_hand_makes_private_files(tmp_path: Path) -> None:
    """``device add`` under an ordinary umask (022): a new folder 0700, the database 0600."""
    db = tmp_path / "new-folder" / "devices.db"
    done = subprocess.run(
        [sys.executable, "-m", "hark_backend", "device", "add", "kitchen", "--db", f"sqlite:///{db}"],
        capture_output=True, text=True, timeout=60, check=False,
        preexec_fn=lambda: os.umask(0o022),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_device_list_revoke_rotate(sqlite_url: str) -> None:
    """list shows name, created, last seen, revoked; revoke and rotate change it."""
    cli("device", "add", "kitchen", "--db", sqlite_url)
    cli("device", "add", "hall", "--db", sqlite_url)
    table = cli("device", "list", "--db", sqlite_url).stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "GROUP", "CREATED"]
    assert "kitchen" in table and "hall" in table
    assert cli("device", "revoke", "hall", "--db", sqlite_url).returncode == 0
    rows = {
        r["name"]: r for r in json.loads(cli("device", "list", "--json", "--db", sqlite_url).stdout)
    }
    assert rows["hall"]["revoked"] is True and rows["kitchen"]["revoked"] is False
    assert rows["kitchen"]["last_seen_at"] is None
    rotated = cli("device", "rotate", "hall", "--db", sqlite_url)
    assert rotated.returncode == 0
    assert rotated.stdout.strip().splitlines()[-1].startswith("hark_dt_")
    rows = {
        r["name"]: r for r in json.loads(cli("device", "list", "--json", "--db", sqlite_url).stdout)
    }
    assert rows["hall"]["revoked"] is False and rows["hall"]["rotated_at"] is not None
    missing = cli("device", "revoke", "nobody", "--db", sqlite_url)
    assert missing.returncode == 1 and "no device named" in missing.stderr


def test_database_from_the_environment(sqlite_url: str) -> None:
    """HARK_BACKEND_DB stands in for --db; without either the command exits 78."""
    assert cli("device", "list", env={"HARK_BACKEND_DB": sqlite_url}).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "HARK_BACKEND_DB"}
    done = subprocess.run(
        [sys.executable, "-m", "hark_backend", "device", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == EX_CONFIG
    assert "--db" in done.stderr


def test_openai_key_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key comes from --openai-key-file, else OPENAI_API_KEY, else $CREDENTIALS_DIRECTORY."""
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert read_openai_key(key_file) == "sk-from-file"
    assert read_openai_key(None) == "sk-from-env"
    monkeypatch.delenv("OPENAI_API_KEY")
    (tmp_path / "openai-key").write_text("sk-from-credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_openai_key(None) == "sk-from-credential"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        read_openai_key(None)
    with pytest.raises(ConfigError, match="cannot read"):
        read_openai_key(tmp_path / "missing")


def test_serve_without_a_key_exits_78(sqlite_url: str) -> None:
    """``serve`` without any OpenAI key refuses to start with EX_CONFIG and says why."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "CREDENTIALS_DIRECTORY")
    }
    done = subprocess.run(
        [sys.executable, "-m", "hark_backend", "serve", "--port", "0", "--db", sqlite_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == EX_CONFIG
    assert "no OpenAI key" in done.stderr


def test_bad_policy_file_exits_78(sqlite_url: str, tmp_path: Path) -> None:
    """An invalid policy (unknown field, lifetime out of range) refuses to start, in one line
    naming each bad field (not pydantic's raw error list)."""
    policy = tmp_path / "policy.toml"
    policy.write_text("key_ttl_s = 5\nbogus = 1\n")
    done = cli(
        "serve", "--port", "0", "--db", sqlite_url, "--policy", str(policy),
        env={"OPENAI_API_KEY": "sk-x"},
    )  # fmt: skip
    assert done.returncode == EX_CONFIG
    assert done.stderr.strip() == (
        "hark-backend: bad policy: key_ttl_s: Input should be greater than or equal to 10;"
        " bogus: Extra inputs are not permitted"
    )
    policy.write_text("key_ttl_s = [")
    done = cli(
        "serve", "--port", "0", "--db", sqlite_url, "--policy", str(policy),
        env={"OPENAI_API_KEY": "sk-x"},
    )  # fmt: skip
    assert done.returncode == EX_CONFIG
    assert done.stderr.startswith(f"hark-backend: bad policy file {policy}: ")
    assert len(done.stderr.strip().splitlines()) == 1


BAD_SERVE_ARGUMENTS = {
    ("--port", "99999"): "argument --port: must be 0..65535 (0 picks a free port), not 99999",
    ("--port", "-1"): "argument --port: must be 0..65535",
    ("--port", "http"): "argument --port: must be a whole number, not 'http'",
    ("--key-ttl-s", "5"): "argument --key-ttl-s: must be 10..7200 seconds, not 5",
    ("--key-ttl-s", "7201"): "argument --key-ttl-s: must be 10..7200 seconds, not 7201",
    ("--max-body-bytes", "-5"): "argument --max-body-bytes: must be 1..16777216, not -5",
    ("--max-body-bytes", "0"): "argument --max-body-bytes: must be 1..16777216, not 0",
    ("--max-header-bytes", "100"): "argument --max-header-bytes: must be 1024..1048576",
    ("--upstream-timeout-s", "nan"): "argument --upstream-timeout-s: must be a finite number",
    ("--upstream-timeout-s", "-1"): "argument --upstream-timeout-s: must be a finite number",
    ("--upstream-connections", "0"): "argument --upstream-connections: must be 1..1000, not 0",
    ("--rate-limit", "5/inf"): "argument --rate-limit: rate limit needs N >= 1 and a finite S",
    ("--rate-limit", "0/60"): "argument --rate-limit: rate limit needs N >= 1",
    ("--auth-fail-limit", "lots"): "argument --auth-fail-limit: rate limit must look like N/S",
    ("--openai-base-url", "ftp://x/v1"): "argument --openai-base-url: must be an https:// URL",
    ("--openai-base-url", "http://example.org/v1"): "must be https unless the host is loopback",
    ("--openai-base-url", "https://x:99999/v1"): "argument --openai-base-url: is not a valid URL",
    ("--openai-base-url", "https://x/v1 "): "argument --openai-base-url: must be one word",
    ("--forwarded-allow-ips", "10.0.0.1,proxy"): "'proxy' is neither",
    ("--model", "gpt realtime"): "argument --model: must be one word of visible characters",
    ("--host", ""): "argument --host: must be one word of visible characters",
    ("--log-level", "loud"): "argument --log-level: invalid choice: 'loud'",
    ("--bogus",): "unrecognized arguments: --bogus",
}


@pytest.mark.parametrize("args", list(BAD_SERVE_ARGUMENTS), ids=" ".join)
def test_every_serve_argument_is_checked(
    args: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad value is refused while parsing: one line naming the option, exit 78."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", *args])
    assert exited.value.code == EX_CONFIG
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("hark-backend")
    assert BAD_SERVE_ARGUMENTS[args] in lines[0]


def test_good_serve_arguments_parse() -> None:
    """The defaults and ordinary values pass (a loopback http upstream included)."""
    args = build_parser().parse_args(
        ["serve", "--port", "0", "--key-ttl-s", "10", "--rate-limit", "5/1.5",
         "--openai-base-url", "http://127.0.0.1:9000/v1", "--forwarded-allow-ips",
         "127.0.0.1, 10.0.0.0/8,::1"],
    )  # fmt: skip
    assert (args.port, args.key_ttl_s, args.rate_limit) == (0, 10, RateLimit(5, 1.5))
    defaults = build_parser().parse_args(["serve"])
    assert (defaults.port, defaults.max_body_bytes, defaults.max_header_bytes) == (
        8080,
        16384,
        16384,
    )
    assert defaults.auth_fail_limit == RateLimit(30, 60.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--port", "99999"), "hark-backend serve: argument --port: must be 0..65535"),
        (("--key-ttl-s", "5"), "hark-backend serve: argument --key-ttl-s: must be 10..7200"),
        (("--max-body-bytes", "-5"), "hark-backend serve: argument --max-body-bytes: must be"),
        (("--ssl-keyfile", "key.pem"), "hark-backend: --ssl-keyfile needs --ssl-certfile"),
        (("--ssl-certfile", "/nonexistent.pem"), "hark-backend: cannot use --ssl-certfile"),
        (("--db", "sqlite://relative.db"), "hark-backend: --db: bad SQLite URL"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else "",
)
def test_serve_refuses_bad_arguments_in_one_line(
    args: tuple[str, ...], message: str, sqlite_url: str
) -> None:
    """As the unit runs it: nothing starts (``--port 99999`` no longer listens on 34463),
    one line on stderr, exit 78, so systemd does not restart it."""
    db = ("--db", sqlite_url) if "--db" not in args else ()
    done = cli("serve", *db, *args, env={"OPENAI_API_KEY": "sk-x"})
    assert done.returncode == EX_CONFIG, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(message)


def test_an_unavailable_database_exits_69(tmp_path: Path) -> None:
    """A database that cannot be opened at start: one line and 69 (worth a restart)."""
    done = cli(
        "serve", "--port", "0", "--db", "sqlite:////proc/no/such/devices.db",
        env={"OPENAI_API_KEY": "sk-x"},
    )  # fmt: skip
    assert done.returncode == EX_UNAVAILABLE
    assert done.stderr.strip().startswith("hark-backend: database unavailable: ")
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["device", "list"], ["serve", "--port", "0"]])
def test_postgres_without_its_driver_is_one_line(
    command: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A postgresql:// URL without psycopg installed: say what to install, exit 78."""
    from hark_backend import cli as cli_module

    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ImportError
    monkeypatch.setattr(cli_module, "_setup_logging", lambda level: None)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    status = cli_module.main([*command, "--db", "postgresql:///hark"])
    assert status == EX_CONFIG
    assert capsys.readouterr().err == (
        "hark-backend: --db: a postgresql:// database needs psycopg:"
        " pip install 'hark-voice[postgres]'\n"
    )


def test_device_command_line_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The device commands share the parser: a missing name is one line and 78 too."""
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["device", "add"])
    assert exited.value.code == EX_CONFIG
    assert capsys.readouterr().err == (
        "hark-backend device add: the following arguments are required: name (see --help)\n"
    )


@pytest.fixture
def sim_with_secret_key() -> Iterator[Any]:
    """An upstream whose key is unique to this test, so a leak is unambiguous."""
    key = "sk-sim-" + secrets.token_hex(16)
    if HAVE_SIM:
        from hark_sim import SimConfig, start_sim

        with start_sim(SimConfig(api_key=key, brain="parrot", realtime_factor=0.0)) as sim:
            yield sim
        return
    fake = FakeUpstream(api_key=key)
    with ServerThread(fake.app()) as server:
        fake.base_url = f"{server.url}/v1"
        yield fake


def test_a_full_run_never_logs_tokens_or_keys(
    sqlite_url: str, tmp_path: Path, sim_with_secret_key: Any
) -> None:
    """Everything ``serve`` writes during a full run (debug level) holds no token or key."""
    upstream = sim_with_secret_key
    token = cli("device", "add", "kitchen", "--db", sqlite_url).stdout.strip().splitlines()[-1]
    log_path = tmp_path / "serve.log"
    proc = _serve(sqlite_url, upstream, log_path, "--log-level", "debug", "--rate-limit", "100/60")
    secrets_seen: list[str] = [token, upstream.api_key]
    try:
        port = _wait_for_port(log_path, proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            _wait_healthy(http)
            auth = {"Authorization": f"Bearer {token}"}
            ok = http.post(MINT, json={}, headers=auth)
            assert ok.status_code == 200, ok.text
            secrets_seen.append(ok.json()["value"])
            assert (
                http.post(MINT, json={}, headers={"Authorization": "Bearer hark_dt_x"}).status_code
                == 401
            )
            assert http.post(MINT, content=b"{bad", headers=auth).status_code == 400
            assert (
                http.post(
                    MINT, json={"session": {"instructions": "x" * 20000}}, headers=auth
                ).status_code
                == 413
            )
            upstream.faults.refuse_keys = True
            assert http.post(MINT, json={}, headers=auth).status_code == 502
            upstream.faults.refuse_keys = False
            assert cli("device", "revoke", "kitchen", "--db", sqlite_url).returncode == 0
            revoked = http.post(MINT, json={}, headers=auth)
            assert revoked.json()["error"]["code"] == "device_revoked"
            rotated = cli("device", "rotate", "kitchen", "--db", sqlite_url).stdout
            new_token = rotated.strip().splitlines()[-1]
            secrets_seen.append(new_token)
            again = http.post(MINT, json={}, headers={"Authorization": f"Bearer {new_token}"})
            assert again.status_code == 200
            secrets_seen.append(again.json()["value"])
    finally:
        proc.terminate()
        proc.wait(20)
    log_text = log_path.read_text()
    assert "device=kitchen" in log_text and "outcome=minted" in log_text
    assert "outcome=device_revoked" in log_text and "upstream_unauthorized" in log_text
    assert "Traceback" not in log_text
    for secret in secrets_seen:
        assert secret not in log_text
        assert secret[8:30] not in log_text  # no fragment of it either


def test_serve_caps_heads_and_answers_malformed_requests_in_the_envelope(
    sqlite_url: str, tmp_path: Path, sim_with_secret_key: Any
) -> None:
    """``serve`` as run in production: a 10 MB header is cut off with 431 (the cap is
    ``--max-header-bytes``), a bad Content-Length is a 400; both in OpenAI's envelope."""
    log_path = tmp_path / "serve.log"
    proc = _serve(sqlite_url, sim_with_secret_key, log_path, "--max-header-bytes", "8192")
    try:
        port = _wait_for_port(log_path, proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            _wait_healthy(http)
            assert http.get("/healthz", headers={"X-Pad": "a" * 7000}).status_code == 200
        huge = b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * (10 << 20) + b"\r\n\r\n"
        status, _, body = parse(exchange(port, huge)[0])
        assert (status, body["error"]["code"]) == (431, "request_header_too_large")
        over = b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n"
        assert parse(exchange(port, over)[0])[0] == 431
        bad = b"POST /v1/realtime/client_secrets HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n"
        status, headers, body = parse(exchange(port, bad)[0])
        assert (status, headers["content-type"]) == (400, "application/json")
        assert "Content-Length" in body["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(20)
    log_text = log_path.read_text()
    assert "status=431 outcome=request_header_too_large" in log_text
    assert "Traceback" not in log_text


def test_serve_limits_failed_authentications(
    sqlite_url: str, tmp_path: Path, sim_with_secret_key: Any
) -> None:
    """``--auth-fail-limit 2/60``: the third failure from one address in a minute is a 429."""
    log_path = tmp_path / "serve.log"
    proc = _serve(sqlite_url, sim_with_secret_key, log_path, "--auth-fail-limit", "2/60")
    try:
        port = _wait_for_port(log_path, proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            _wait_healthy(http)
            auth = {"Authorization": "Bearer hark_dt_" + "x" * 43}
            statuses = [http.post(MINT, json={}, headers=auth).status_code for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(20)
    assert statuses == [401, 401, 429]
    assert "auth_fail_limit=2/60s" in log_path.read_text()


def _serve(db_url: str, upstream: Any, log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    """``hark-backend serve`` on an ephemeral port, its OpenAI key from a file, logging to
    ``log_path`` (``OPENAI_API_KEY`` is not inherited: the file must be what counts)."""
    key_file = log_path.with_name("openai-key")
    key_file.write_text(upstream.api_key)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    with log_path.open("w") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "hark_backend", "serve", "--host", "127.0.0.1", "--port", "0",
             "--db", db_url, "--openai-base-url", upstream.base_url,
             "--openai-key-file", str(key_file), *extra],
            stdout=log_file, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip


def _wait_for_port(log_path: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"listening on https?://127\.0\.0\.1:(\d+)", log_path.read_text())
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {log_path.read_text()}")
        time.sleep(0.05)
    raise AssertionError("serve did not log its port")


def _wait_healthy(http: httpx.Client) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if http.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("serve never became healthy")


def test_serve_over_tls_to_a_device(
    sqlite_url: str,
    tmp_path: Path,
    sim_with_secret_key: Any,
    pki: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``serve --ssl-certfile``: a device that trusts the CA gets a key over https."""
    from hark.net import keys

    token = cli("device", "add", "kitchen", "--db", sqlite_url).stdout.strip().splitlines()[-1]
    log_path = tmp_path / "serve.log"
    tls = ("--ssl-certfile", str(pki.cert), "--ssl-keyfile", str(pki.key))
    proc = _serve(sqlite_url, sim_with_secret_key, log_path, *tls)
    try:
        port = _wait_for_port(log_path, proc)
        assert f"https://127.0.0.1:{port}" in log_path.read_text()
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
        keys.tls_context.cache_clear()
        source = keys.KeySource(f"https://127.0.0.1:{port}{MINT}", token, None, 10.0)
        deadline = time.monotonic() + 30
        while True:
            try:
                grant = source.fetch_blocking()
                break
            except keys.KeyFetchError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert grant.value.startswith("ek_")
    finally:
        keys.tls_context.cache_clear()
        proc.terminate()
        proc.wait(20)
