"""The shipped deploy files: nginx runs, in front of two real hubs; the rest (Dockerfile,
compose, Kubernetes, systemd) cannot run here, so they are read and checked to agree with the
hub's own settings: ports, probes, signals, grace periods."""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from hub.client import HubClient
from hub.config import Settings
from hub.core.eventstream import Parser
from hub.web.websocket import CLOSE_TIMEOUT
from tests.support import (
    HUB_LOGS,
    HubProcess,
    free_port,
    secrets_in_logs,
    token,
    wait_for,
    wait_until,
)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DRAIN = Settings().shutdown_grace + CLOSE_TIMEOUT  # the longest a SIGTERM drain takes
HEARTBEAT = Settings().heartbeat
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def seconds(value: str) -> float:
    """`30s`, `75s`, `1m`, `30` → seconds."""
    number, unit = re.fullmatch(r"(\d+)(s|m)?", value.strip()).groups()  # type: ignore[union-attr]
    return float(number) * (60 if unit == "m" else 1)


# --- read and checked -------------------------------------------------------------------------


def test_the_nginx_config_routes_sockets_streams_and_keeps_metrics_private() -> None:
    conf = (DEPLOY / "nginx.conf").read_text()
    assert re.findall(r"server 127\.0\.0\.1:(\d+)", conf) == ["8081", "8082"]
    for location in ("/ws/", "/sse/"):
        block = conf.split(f"location {location}", 1)[1].split("}", 1)[0]
        assert seconds(re.search(r"proxy_read_timeout (\w+);", block)[1]) > HEARTBEAT  # type: ignore[index]
    assert "proxy_buffering off" in conf.split("location /sse/", 1)[1].split("}", 1)[0]
    assert "location = /metrics" in conf
    assert "$request_uri" not in conf  # the log format names $uri: no query string


def test_the_systemd_unit_drains_and_has_descriptors() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((DEPLOY / "hub@.service").read_text())
    service = unit["Service"]
    assert service["KillSignal"] == "SIGTERM"
    assert seconds(service["TimeoutStopSec"]) > DRAIN
    assert int(service["LimitNOFILE"]) >= 65536
    assert service["Environment"] == "HUB_PORT=%i"


def test_the_dockerfile_runs_unprivileged_with_a_readiness_healthcheck() -> None:
    lines = [
        line.strip()
        for line in (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    instructions = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    assert instructions["FROM"].startswith("python:3.11-slim")
    assert instructions["USER"] not in ("0", "root")
    assert instructions["STOPSIGNAL"] == "SIGTERM"
    assert "/readyz" in instructions["HEALTHCHECK"]
    assert instructions["EXPOSE"] == "8080"
    assert "HUB_PORT=8080" in instructions["ENV"]
    assert "HUB_HOST=0.0.0.0" in instructions["ENV"]


def test_the_compose_file_agrees_with_the_nginx_config_and_the_drain() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert "--appendonly" in services["redis"]["command"]
    upstreams = re.findall(r"127\.0\.0\.1:(\d+)", (DEPLOY / "nginx.conf").read_text())
    hubs = [services[name] for name in ("hub1", "hub2")]
    assert sorted(hub["environment"]["HUB_PORT"] for hub in hubs) == sorted(upstreams)
    for hub in hubs:
        assert hub["stop_signal"] == "SIGTERM"
        assert seconds(hub["stop_grace_period"]) > DRAIN
        assert hub["environment"]["REDIS_URL"].startswith("redis://redis:")
    assert "8080:8080" in services["nginx"]["ports"][0]


def test_the_kubernetes_manifests_probe_drain_and_route_as_the_hub_expects() -> None:
    documents = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s/hub.yaml").read_text())}
    assert set(documents) == {"Deployment", "Service", "Ingress", "PodDisruptionBudget"}
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    port = int(env["HUB_PORT"])
    assert container["ports"][0]["containerPort"] == port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    pause = float(re.search(r"sleep\((\d+)\)", pre_stop[-1])[1])  # type: ignore[index]
    assert pod["terminationGracePeriodSeconds"] > pause + DRAIN
    assert pod["securityContext"]["runAsNonRoot"] is True
    labels = documents["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert documents["Service"]["spec"]["selector"] == labels
    assert documents["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    annotations = documents["Ingress"]["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert float(annotations[prefix + "proxy-read-timeout"]) > HEARTBEAT
    assert annotations[prefix + "proxy-buffering"] == "off"
    paths = {
        p["path"]: p["pathType"] for p in documents["Ingress"]["spec"]["rules"][0]["http"]["paths"]
    }
    assert {"/ws/", "/sse/", "/accounts"} <= set(paths)
    assert "/metrics" not in paths
    assert all(path != "/" or kind == "Exact" for path, kind in paths.items())  # nothing else


# --- run: nginx in front of two hubs ------------------------------------------------------------


@dataclass
class Proxy:
    port: int
    log: Path

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"


def nginx_config(directory: Path, port: int, upstreams: list[int]) -> Path:
    """The shipped file with its ports and log directory changed, in a minimal main config."""
    site = (DEPLOY / "nginx.conf").read_text()
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    site = site.replace("127.0.0.1:8081", f"127.0.0.1:{upstreams[0]}")
    site = site.replace("127.0.0.1:8082", f"127.0.0.1:{upstreams[1]}")
    site = site.replace("/var/log/nginx/", f"{directory}/")  # the access and error logs
    (directory / "hub.conf").write_text(site)
    main = directory / "nginx.conf"
    main.write_text(
        f"pid {directory}/nginx.pid;\n"
        f"error_log {directory}/error.log;\n"
        "events { worker_connections 1024; }\n"
        f"http {{ client_body_temp_path {directory}/body; include {directory}/hub.conf; }}\n"
    )
    return main


@pytest.fixture
def two_hubs(tmp_path: Path, hub_env: dict[str, str]) -> Iterator[list[HubProcess]]:
    hubs = [HubProcess({**hub_env, "HUB_PORT": str(free_port())}, tmp_path) for _ in range(2)]
    yield hubs
    for hub in hubs:
        if hub.process.poll() is None:
            hub.process.kill()
            hub.process.wait()


@pytest.fixture
def proxy(tmp_path: Path, two_hubs: list[HubProcess]) -> Iterator[Proxy]:
    directory = tmp_path / "nginx"
    directory.mkdir()
    port = free_port()
    config = nginx_config(directory, port, [hub.port for hub in two_hubs])
    command = [NGINX, "-p", str(directory), "-c", str(config)]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen([*command, "-g", "daemon off;"], stderr=subprocess.DEVNULL)
    proxy = Proxy(port, directory / "hub.access.log")
    try:
        wait_for(lambda: _answers(proxy), timeout=10)
        # Scanned with the hubs' logs at the end of the run.
        HUB_LOGS.extend([proxy.log, directory / "hub.error.log"])
        yield proxy
    finally:
        process.terminate()
        process.wait(timeout=10)


def _answers(proxy: Proxy) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(proxy.url("/healthz"), timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError):
        return False


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def publish(http: aiohttp.ClientSession, url: str, payload: Any) -> str:
    """Publish until acknowledged, with one idempotency key: a retry after a hub went away
    mid-request is stored once."""
    key = uuid.uuid4().hex
    headers = {"Authorization": f"Bearer {token('svc', '*')}", "Idempotency-Key": key}
    acknowledged: list[str] = []

    async def acknowledged_now() -> bool:
        try:
            async with http.post(url, json={"type": "T", "payload": payload}, headers=headers) as r:
                if r.status in (200, 201):
                    acknowledged.append(str((await r.json())["id"]))
                    return True
                assert r.status >= 500, await r.text()
        except aiohttp.ClientError:
            pass
        return False

    await wait_until(acknowledged_now, timeout=10, what="the publish to be acknowledged")
    return acknowledged[0]


async def test_nginx_fronts_two_hubs_through_a_rolling_restart(
    proxy: Proxy, two_hubs: list[HubProcess], http: aiohttp.ClientSession
) -> None:
    """Sockets through nginx get events published to either hub; both hubs are restarted in
    turn (SIGTERM, then started again) while events are published through nginx: resuming
    clients get every acknowledged event once, in order."""
    clients = [HubClient(proxy.url("/ws/acct", "ws"), token=token("acct")) for _ in range(4)]
    received: list[list[str]] = [[] for _ in clients]

    async def collect(client: HubClient, into: list[str]) -> None:
        async for event in client:
            into.append(event.id)

    acknowledged: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)
        readers = [
            asyncio.create_task(collect(c, r)) for c, r in zip(clients, received, strict=True)
        ]
        await wait_until(lambda: all(c.state == "open" for c in clients), 20, "sockets to open")
        for hub in two_hubs:  # directly to each process: delivered across processes
            acknowledged.append(await publish(http, hub.url("/accounts/acct/events"), "direct"))

        stop = asyncio.Event()

        async def publish_steadily() -> None:
            n = 0
            while not stop.is_set():
                acknowledged.append(await publish(http, proxy.url("/accounts/acct/events"), n))
                n += 1
                await asyncio.sleep(0.02)  # the publishing rate

        publisher = asyncio.create_task(publish_steadily())
        for index, hub in enumerate(two_hubs):
            two_hubs[index] = await hub.restart()
            await wait_until(lambda: all(c.state == "open" for c in clients), 30, "sockets back")
        stop.set()
        await publisher
        await wait_until(
            lambda: all(len(r) >= len(acknowledged) for r in received), 30, "every event"
        )
        for reader in readers:
            reader.cancel()
    assert len(acknowledged) > 10
    for ids in received:
        assert ids == acknowledged  # once each, in publish order


async def test_event_streams_pass_through_nginx_unbuffered(
    proxy: Proxy, two_hubs: list[HubProcess], http: aiohttp.ClientSession
) -> None:
    url = proxy.url(f"/sse/s?token={token('s')}")
    async with http.get(url) as response:
        assert response.status == 200
        parser, messages = Parser(), []

        async def next_message() -> Any:
            async with asyncio.timeout(10):
                while not messages:
                    messages.extend(parser.feed(await response.content.readany()))
            return messages.pop(0)

        assert (await next_message()).name == "welcome"
        published = await publish(http, proxy.url("/accounts/s/events"), "through nginx")
        assert (await next_message()).id.startswith(published)  # at once, not buffered


async def test_metrics_are_not_routed_and_query_strings_are_not_logged(
    proxy: Proxy, two_hubs: list[HubProcess], http: aiohttp.ClientSession
) -> None:
    async with http.get(proxy.url("/metrics")) as response:
        assert response.status == 404
    async with http.get(two_hubs[0].url("/metrics")) as response:
        assert response.status == 200  # scraped on the process itself
    async with http.ws_connect(proxy.url(f"/ws/q?token={token('q')}", "ws")) as ws:
        assert (await ws.receive_json(timeout=10))["op"] == "welcome"
    # A page the hub served through the proxy is the hub's own: its cookie works.
    own = {"Origin": proxy.url(""), "Cookie": f"hub_token={token('q')}"}
    async with http.ws_connect(proxy.url("/ws/q", "ws"), headers=own) as ws:
        assert (await ws.receive_json(timeout=10))["op"] == "welcome"
    await wait_until(lambda: "/ws/q" in proxy.log.read_text(), 10, "the access log line")
    assert not secrets_in_logs([proxy.log])
