"""The command line and the embedded Redis, run as a user would: real processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.core.auth import verify
from tests.support import SECRET, HubProcess, alive, free_port, secrets_in_logs, token, wait_for


def hub_command(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "REDIS_URL"))}
    env["HUB_DATA_DIR"] = str(tmp_path / "data")
    return env


def test_token_prints_a_verifiable_token(tmp_path: Path, base_env: dict[str, str]) -> None:
    env = {**base_env, "HUB_SECRET": SECRET}
    result = hub_command("token", "42", "--publish", "42,43", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    claims = verify(result.stdout.strip(), SECRET, time.time())
    assert claims.subject == "42"
    assert claims.publish_to == frozenset({"42", "43"})

    star = hub_command("token", "billing", "--publish", "*", env=env, cwd=tmp_path)
    assert verify(star.stdout.strip(), SECRET, time.time()).publish_everywhere

    expired = hub_command("token", "1", "--ttl", "-10", env=env, cwd=tmp_path)
    with pytest.raises(Exception, match="expired"):
        verify(expired.stdout.strip(), SECRET, time.time())


def test_token_reads_the_secret_from_dotenv(tmp_path: Path, base_env: dict[str, str]) -> None:
    (tmp_path / ".env").write_text(f"HUB_SECRET={SECRET}\n")
    result = hub_command("token", "7", env=base_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert verify(result.stdout.strip(), SECRET, time.time()).subject == "7"


def test_errors_are_one_clear_line(tmp_path: Path, base_env: dict[str, str]) -> None:
    result = hub_command("token", "7", env=base_env, cwd=tmp_path)
    assert (result.returncode, result.stderr.count("\n")) == (2, 1)
    assert "HUB_SECRET" in result.stderr

    bad_port = hub_command("serve", env={**base_env, "HUB_PORT": "http"}, cwd=tmp_path)
    assert bad_port.returncode == 2
    assert bad_port.stderr.startswith("hub: error: HUB_PORT must be")
    assert bad_port.stderr.count("\n") == 1

    exposed = {**base_env, "HUB_AUTH": "off", "HUB_HOST": "0.0.0.0"}
    refused = hub_command("serve", env=exposed, cwd=tmp_path)
    assert refused.returncode == 2
    assert "HUB_AUTH=off" in refused.stderr

    no_hub = hub_command("publish", "1", "T", "{}", env=base_env, cwd=tmp_path)
    assert no_hub.returncode == 2
    assert "hub serve" in no_hub.stderr


@pytest.fixture
def serve_env(base_env: dict[str, str]) -> dict[str, str]:
    return {**base_env, "HUB_AUTH": "off", "HUB_PORT": str(free_port())}


@pytest.fixture
def hubs() -> Iterator[list[HubProcess]]:
    started: list[HubProcess] = []
    yield started
    for hub in started:
        if hub.process.poll() is None:
            hub.process.kill()
            hub.process.wait()


def test_embedded_redis_keeps_events_and_does_not_outlive_the_hub(
    tmp_path: Path, serve_env: dict[str, str], hubs: list[HubProcess]
) -> None:
    first = HubProcess(serve_env, tmp_path)
    hubs.append(first)
    event = first.request("/accounts/1/events", {"type": "T", "payload": {"kept": True}})
    published = hub_command(
        "publish", "1", "Note", "not json", "--key", "k", env=serve_env, cwd=tmp_path
    )
    assert published.returncode == 0, published.stderr
    again = hub_command(
        "publish", "1", "Note", "not json", "--key", "k", env=serve_env, cwd=tmp_path
    )
    assert again.stdout == published.stdout  # the same event: stored once
    other = hub_command("publish", "1", "Note", "other", "--key", "k", env=serve_env, cwd=tmp_path)
    assert other.returncode == 2
    assert "idempotency key already used" in other.stderr

    # A second hub may not share the data directory.
    other = hub_command("serve", env={**serve_env, "HUB_PORT": str(free_port())}, cwd=tmp_path)
    assert other.returncode != 0
    assert "another hub" in other.stderr + other.stdout

    redis_pid = first.redis_pid()
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=30) == 0
    wait_for(lambda: not alive(redis_pid))

    second = HubProcess(serve_env, tmp_path)
    hubs.append(second)
    events = second.request("/accounts/1/events")["events"]
    assert events[0]["id"] == event["id"]
    assert [(e["type"], e["payload"]) for e in events] == [
        ("T", {"kept": True}),
        ("Note", "not json"),
    ]

    # Killed outright, the hub still takes its Redis down with it.
    redis_pid = second.redis_pid()
    second.process.kill()
    second.process.wait()
    wait_for(lambda: not alive(redis_pid))


def test_embedded_redis_is_restarted_if_it_dies(
    tmp_path: Path, serve_env: dict[str, str], hubs: list[HubProcess]
) -> None:
    hub = HubProcess(serve_env, tmp_path)
    hubs.append(hub)
    before = hub.request("/accounts/1/events", {"type": "T", "payload": 1})
    os.kill(hub.redis_pid(), signal.SIGKILL)

    def published() -> bool:
        try:
            hub.request("/accounts/1/events", {"type": "T", "payload": 2})
        except urllib.error.HTTPError as error:
            error.close()
            return False
        return True

    wait_for(published)
    wait_for(hub.ready)
    ids = [e["id"] for e in hub.request("/accounts/1/events")["events"]]
    assert ids[0] == before["id"]  # in the AOF before the reply: a killed Redis keeps it


def test_tokens_never_reach_the_logs(
    tmp_path: Path, base_env: dict[str, str], hubs: list[HubProcess]
) -> None:
    env = {**base_env, "HUB_SECRET": SECRET, "HUB_PORT": str(free_port())}
    hub = HubProcess(env, tmp_path)
    hubs.append(hub)
    good = token("1")
    bad = good[:-4] + "AAAA"
    assert "events" in hub.request(f"/accounts/1/events?token={good}")
    with pytest.raises(urllib.error.HTTPError) as refused:
        hub.request(f"/accounts/1/events?token={bad}")
    assert refused.value.code == 401
    refused.value.close()
    request = urllib.request.Request(hub.url("/accounts/1/events"))
    request.add_header("Authorization", f"Bearer {good}")
    with urllib.request.urlopen(request, timeout=10):
        pass

    hub.process.send_signal(signal.SIGTERM)
    hub.process.wait(timeout=30)
    log = hub.log.read_text()
    assert "/accounts/1/events" in log  # the access log is on
    assert good not in log
    assert bad not in log
    assert good.split(".")[2] not in log  # not even the signature


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_busy_port_is_one_line_and_leaves_no_redis(
    tmp_path: Path, serve_env: dict[str, str], workers: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**serve_env, "HUB_PORT": str(port), "HUB_WORKERS": workers}
        result = hub_command("serve", env=env, cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert errors == [f"hub: error: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "redis.sock").exists()


def test_the_log_scan_finds_tokens_cookies_and_query_strings(tmp_path: Path) -> None:
    """The run-wide scan (conftest `no_secrets_in_hub_logs`) must see what it looks for."""
    log = tmp_path / "hub.log"
    clean = '{"event": "request", "path": "/sse/7", "status": 200}'
    leaks = [
        f'{{"event": "x", "detail": "{token("7")}"}}',
        '{"event": "x", "headers": "Cookie: hub_token=abc"}',
        '{"event": "request", "path": "/ws/7?last_id=0"}',
    ]
    log.write_text("\n".join([clean, *leaks]) + "\n")
    assert len(secrets_in_logs([log])) == len(leaks)


def test_version_and_an_unknown_run_command(tmp_path: Path, base_env: dict[str, str]) -> None:
    from importlib.metadata import version

    expected = f"hub {version('hub')}"
    assert hub_command("--version", env=base_env, cwd=tmp_path).stdout.strip() == expected
    installed = shutil.which("hub", path=str(Path(sys.executable).parent))
    assert installed is not None
    result = subprocess.run([installed, "--version"], capture_output=True, text=True, check=False)
    assert result.stdout.strip() == expected
    run = Path(__file__).resolve().parent.parent / "run"
    bogus = subprocess.run([str(run), "bogus"], capture_output=True, text=True, check=False)
    assert bogus.returncode == 2
    assert "unknown command: bogus" in bogus.stderr


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_serve_drains_then_exits_130_on_ctrl_c_and_0_on_sigterm(
    tmp_path: Path, serve_env: dict[str, str], hubs: list[HubProcess], sig: int, status: int
) -> None:
    """The same every time: Ctrl-C is an interruption (130, as a shell reports it), SIGTERM
    the orderly stop of a supervisor (0); both drain first."""
    hub = HubProcess(serve_env, tmp_path)
    hubs.append(hub)
    hub.process.send_signal(sig)
    assert hub.process.wait(timeout=30) == status
    assert '"event":"hub_stopping"' in hub.log.read_text().replace(" ", "")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_in_a_terminal_drains_before_redis_stops(
    tmp_path: Path, serve_env: dict[str, str], workers: str
) -> None:
    """A terminal's Ctrl-C signals the whole foreground process group: the embedded Redis
    must not stop with it (and be restarted, with an error line) while the hub drains."""
    env = {**serve_env, "HUB_WORKERS": workers}
    log = tmp_path / "hub.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "hub", "serve"],
            env=env,
            cwd=tmp_path,
            stderr=stderr,
            start_new_session=True,  # a group of its own, as a shell's foreground job
        )
    try:
        url = f"http://127.0.0.1:{env['HUB_PORT']}/readyz"
        wait_for(lambda: _ready(url))
        # A socket that never answers the hub's close: the drain takes its full 5 s.
        with socket.create_connection(("127.0.0.1", int(env["HUB_PORT"]))) as held:
            held.sendall(
                b"GET /ws/1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            assert b" 101 " in held.recv(4096)
            os.killpg(process.pid, signal.SIGINT)
            assert process.wait(timeout=30) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert "embedded_redis_exited" not in events
    assert events[-1] == "embedded_redis_stopped"


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError):
        return False
