"""The HTTP API over a real TCP server and a real Redis: every status code of the contract."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from hub.config import Settings
from tests.support import RedisServer, bearer, token, wait_until

Client = Any


async def test_health_endpoints(client: Client) -> None:
    response = await client.get("/")
    assert (response.status, await response.text()) == (200, "Healthy")
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200


async def test_unknown_routes_answer_json(client: Client) -> None:
    response = await client.get("/nowhere")
    assert response.status == 404
    assert (await response.json())["error"] == "not_found"
    response = await client.delete("/accounts/1/events")
    assert response.status == 405


async def test_publish_then_read_history(client: Client) -> None:
    headers = bearer("1", ["1"])
    ids = []
    for n in range(3):
        response = await client.post(
            "/accounts/1/events", json={"type": "T", "payload": {"n": n}}, headers=headers
        )
        assert response.status == 201
        ids.append((await response.json())["id"])

    response = await client.get("/accounts/1/events", headers=headers)
    assert response.status == 200
    events = (await response.json())["events"]
    assert [e["id"] for e in events] == ids
    assert [e["payload"] for e in events] == [{"n": 0}, {"n": 1}, {"n": 2}]

    page = await client.get(f"/accounts/1/events?after={ids[0]}&limit=1", headers=headers)
    assert [e["id"] for e in (await page.json())["events"]] == [ids[1]]


async def test_missing_payload_is_null(client: Client) -> None:
    headers = bearer("1", ["1"])
    assert (
        await client.post("/accounts/1/events", json={"type": "T"}, headers=headers)
    ).status == 201
    events = (await (await client.get("/accounts/1/events", headers=headers)).json())["events"]
    assert events[0]["payload"] is None


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "invalid_body"),
        (b"[1, 2]", "invalid_body"),
        (b'{"payload": 1}', "invalid_type"),
        (b'{"type": 5}', "invalid_type"),
        (b'{"type": ""}', "invalid_type"),
    ],
)
async def test_publish_rejects_bad_bodies(client: Client, body: bytes, code: str) -> None:
    headers = {**bearer("1", ["1"]), "Content-Type": "application/json"}
    response = await client.post("/accounts/1/events", data=body, headers=headers)
    assert response.status == 400
    assert (await response.json())["error"] == code


async def test_publish_status_codes(client: Client) -> None:
    body = {"type": "T", "payload": 1}
    assert (
        await client.post("/accounts/a:b/events", json=body, headers=bearer("1", "*"))
    ).status == 400
    assert (await client.post("/accounts/1/events", json=body)).status == 401
    expired = bearer("1", ["1"], ttl=-5)
    response = await client.post("/accounts/1/events", json=body, headers=expired)
    assert (response.status, (await response.json())["error"]) == (401, "token_expired")
    assert (await client.post("/accounts/1/events", json=body, headers=bearer("1"))).status == 403
    assert (
        await client.post("/accounts/2/events", json=body, headers=bearer("1", ["1"]))
    ).status == 403
    assert (
        await client.post("/accounts/2/events", json=body, headers=bearer("svc", "*"))
    ).status == 201


async def test_bodies_above_the_limit_are_refused(make_client: Any, settings: Settings) -> None:
    client = await make_client(settings, max_message=2048)
    body = {"type": "T", "payload": "x" * 4096}
    response = await client.post("/accounts/1/events", json=body, headers=bearer("1", ["1"]))
    assert response.status == 413
    assert (await response.json())["error"] == "too_large"


async def test_history_status_codes(client: Client) -> None:
    assert (await client.get("/accounts/1/events")).status == 401
    assert (await client.get("/accounts/1/events", headers=bearer("2", ["1"]))).status == 403
    assert (await client.get("/accounts/1/events", headers=bearer("1"))).status == 200
    assert (await client.get("/accounts/1/events", headers=bearer("svc", "*"))).status == 200
    for query in ["after=x", "limit=0", "limit=1001", "limit=ten"]:
        response = await client.get(f"/accounts/1/events?{query}", headers=bearer("1"))
        assert response.status == 400, query
    assert (await client.get("/accounts/1/events?limit=1000", headers=bearer("1"))).status == 200


async def test_tokens_from_cookie_and_query_work_over_http(client: Client) -> None:
    response = await client.get("/accounts/1/events", cookies={"hub_token": token("1")})
    assert response.status == 200
    assert (await client.get(f"/accounts/1/events?token={token('1')}")).status == 200


async def test_create_account(client: Client, redis_server: RedisServer) -> None:
    admin = bearer("svc", "*")
    response = await client.post("/accounts", json={"email": "Ada@Example.com"}, headers=admin)
    assert response.status == 201
    account = (await response.json())["id"]
    assert isinstance(account, str)

    again = await client.post("/accounts", json={"email": "ada@example.COM"}, headers=admin)
    assert again.status == 409
    assert (await again.json())["error"] == "email_taken"

    redis = redis_server.client()
    assert redis.get("email:ada@example.com") == account.encode()
    events = (await (await client.get(f"/accounts/{account}/events", headers=admin)).json())[
        "events"
    ]
    assert [(e["type"], e["payload"]) for e in events] == [
        ("AccountCreated", {"email": "ada@example.com"})
    ]


async def test_create_account_status_codes(client: Client) -> None:
    assert (await client.post("/accounts", json={"email": "a@b.io"})).status == 401
    assert (
        await client.post("/accounts", json={"email": "a@b.io"}, headers=bearer("1", ["1"]))
    ).status == 403
    for body in [{"email": "nope"}, {}, {"email": 3}]:
        response = await client.post("/accounts", json=body, headers=bearer("svc", "*"))
        assert response.status == 400


async def test_fifty_simultaneous_reservations_of_one_address_make_one_account(
    client: Client, redis_server: RedisServer
) -> None:
    admin = bearer("svc", "*")
    gate = asyncio.Event()

    async def attempt() -> int:
        await gate.wait()
        response = await client.post("/accounts", json={"email": "race@example.com"}, headers=admin)
        return int(response.status)

    attempts = [asyncio.create_task(attempt()) for _ in range(50)]
    await asyncio.sleep(0)  # let every task reach the gate
    gate.set()
    statuses = await asyncio.gather(*attempts)

    assert statuses.count(201) == 1
    assert statuses.count(409) == 49
    owner = redis_server.client().get("email:race@example.com")
    assert redis_server.client().xlen(redis_server.layout.account_log(owner.decode())) == 1


async def test_a_failed_event_write_releases_the_reservation(
    client: Client, redis_server: RedisServer
) -> None:
    redis = redis_server.client()
    # The next account's stream key already holds another type: the XADD in the script fails.
    next_id = int(redis.get("account_id") or 0) + 1
    redis.set(redis_server.layout.account_log(str(next_id)), "not a stream")
    response = await client.post("/accounts", json={"email": "x@y.io"}, headers=bearer("svc", "*"))
    assert (response.status, (await response.json())["error"]) == (500, "internal")
    assert redis.get("email:x@y.io") is None
    response = await client.post("/accounts", json={"email": "x@y.io"}, headers=bearer("svc", "*"))
    assert response.status == 201


async def test_redis_down_gives_503_and_the_hub_keeps_serving(
    make_client: Any, settings: Settings, own_redis: RedisServer
) -> None:
    client = await make_client(settings, redis_url=own_redis.url)
    own_redis.stop()
    body = {"type": "T", "payload": 1}
    response = await client.post("/accounts/1/events", json=body, headers=bearer("1", ["1"]))
    assert (response.status, (await response.json())["error"]) == (503, "unavailable")
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200
    own_redis.start()
    response = await client.post("/accounts/1/events", json=body, headers=bearer("1", ["1"]))
    assert response.status == 201


async def test_a_publish_repeated_with_its_idempotency_key_stores_nothing(
    make_client: Any, settings: Settings, redis_server: RedisServer
) -> None:
    client = await make_client(settings, idempotency_window=1)
    headers = {**bearer("svc", "*"), "Idempotency-Key": "order-42/attempt"}
    body = {"type": "T", "payload": {"n": 1}}
    first = await client.post("/accounts/a/events", json=body, headers=headers)
    again = await client.post("/accounts/a/events", json=body, headers=headers)
    assert (first.status, again.status) == (201, 200)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert (await again.json())["id"] == (await first.json())["id"]
    redis = redis_server.client()
    assert redis.xlen(redis_server.layout.account_log("a")) == 1

    # Keys are per account; and forgotten after the window.
    other = await client.post("/accounts/b/events", json=body, headers=headers)
    assert other.status == 201
    expiring = redis_server.layout.idempotency("a", "svc", "order-42/attempt")
    await wait_until(lambda: not redis.exists(expiring), what="the key to expire")
    later = await client.post("/accounts/a/events", json=body, headers=headers)
    assert later.status == 201
    assert redis.xlen(redis_server.layout.account_log("a")) == 2


async def test_idempotency_keys_are_each_publisher_s_own_and_name_one_event(
    client: Client, redis_server: RedisServer
) -> None:
    """Two publishers' keys never collide; one publisher's key reused for another event is a
    mistake, answered 422 rather than replaying an event that is not the one meant."""
    body = {"type": "T", "payload": 1}
    mine = {**bearer("billing", "*"), "Idempotency-Key": "7"}
    theirs = {**bearer("shipping", "*"), "Idempotency-Key": "7"}
    first = await client.post("/accounts/a/events", json=body, headers=mine)
    other = await client.post("/accounts/a/events", json=body, headers=theirs)
    assert (first.status, other.status) == (201, 201)
    assert (await first.json())["id"] != (await other.json())["id"]
    changed = await client.post(
        "/accounts/a/events", json={"type": "T", "payload": 2}, headers=mine
    )
    assert (changed.status, (await changed.json())["error"]) == (422, "idempotency_key_reused")
    assert redis_server.client().xlen(redis_server.layout.account_log("a")) == 2


async def test_a_redis_that_refuses_writes_gives_503_and_stores_nothing(
    make_client: Any, settings: Settings, own_redis: RedisServer
) -> None:
    """Out of memory (like loading, read-only, failing persistence) is refused before the
    publish script writes anything: 503, safe to retry, never 500 or 504."""
    client = await make_client(settings, redis_url=own_redis.url)
    redis = own_redis.client()
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", 1)
    try:
        response = await client.post(
            "/accounts/a/events", json={"type": "T"}, headers=bearer("svc", "*")
        )
        assert (response.status, (await response.json())["error"]) == (503, "unavailable")
    finally:
        redis.config_set("maxmemory", 0)
    assert redis.xlen("account:a:log") == 0


@pytest.mark.parametrize("key", ["", "k" * 129, "tab\there"])
async def test_idempotency_keys_are_checked(client: Client, key: str) -> None:
    headers = {**bearer("svc", "*"), "Idempotency-Key": key}
    response = await client.post("/accounts/a/events", json={"type": "T"}, headers=headers)
    assert (response.status, (await response.json())["error"]) == (400, "invalid_idempotency_key")


async def test_the_openapi_document_is_valid_and_describes_every_route(client: Client) -> None:
    from openapi_spec_validator import validate

    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    validate(document)
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    served = {
        (route.method, route.resource.canonical)
        for route in client.app.router.routes()
        if route.method not in ("HEAD", "OPTIONS") and route.resource is not None
    }
    assert documented == served


APP = "https://app.example.com"
EVIL = "https://evil.example.com"


async def test_cors_for_listed_origins_only(make_client: Any, settings: Settings) -> None:
    client = await make_client(settings, allowed_origins=frozenset({APP}))
    preflight = await client.options(
        "/accounts/1/events",
        headers={"Origin": APP, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == APP
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in preflight.headers.getall("Vary")
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    allowed = preflight.headers["Access-Control-Allow-Headers"]
    assert {"Authorization", "Content-Type", "Idempotency-Key"} <= set(allowed.split(", "))

    history = await client.get("/accounts/1/events", headers={**bearer("1"), "Origin": APP})
    assert history.status == 200
    assert history.headers["Access-Control-Allow-Origin"] == APP
    assert "Origin" in history.headers.getall("Vary")

    for response in (
        await client.options("/accounts/1/events", headers={"Origin": EVIL}),
        await client.get("/accounts/1/events", headers={**bearer("1"), "Origin": EVIL}),
    ):
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_no_cors_without_an_allowlist(client: Client) -> None:
    preflight = await client.options("/accounts/1/events", headers={"Origin": APP})
    history = await client.get("/accounts/1/events", headers={**bearer("1"), "Origin": APP})
    assert (preflight.status, history.status) == (204, 200)
    for response in (preflight, history):
        assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("allowlist", [None, frozenset({APP})])
async def test_the_cookie_works_only_for_the_hub_s_own_and_listed_pages(
    make_client: Any, settings: Settings, allowlist: frozenset[str] | None
) -> None:
    """A page elsewhere cannot publish with a user's cookie (CSRF): the browser attaches the
    cookie by itself, so the Origin decides. Requests without Origin are not a page's."""
    client = await make_client(settings, allowed_origins=allowlist)
    own = str(client.make_url("")).rstrip("/")
    cookie = {"Cookie": f"hub_token={token('1', ['1'])}"}
    body = {"type": "T"}

    async def publish(origin: str | None) -> int:
        headers = {**cookie, **({"Origin": origin} if origin else {})}
        response = await client.post("/accounts/1/events", json=body, headers=headers)
        return response.status

    assert await publish(None) == 201
    assert await publish(own) == 201
    assert await publish(APP) == (201 if allowlist else 403)
    refused = await client.post("/accounts/1/events", json=body, headers={**cookie, "Origin": EVIL})
    assert (refused.status, (await refused.json())["error"]) == (403, "origin_not_allowed")
    # A bearer token is not attached by the browser: any page may use it (CORS permitting).
    bearer_headers = {**bearer("1", ["1"]), "Origin": EVIL}
    assert (
        await client.post("/accounts/1/events", json=body, headers=bearer_headers)
    ).status == 201
    # Sockets too.
    with pytest.raises(aiohttp.WSServerHandshakeError) as socket_refused:
        await client.ws_connect("/ws/1", headers={**cookie, "Origin": EVIL})
    assert socket_refused.value.status == 403


async def test_bodies_must_be_json(client: Client) -> None:
    """A form or text/plain POST needs no CORS preflight: it is refused by its type."""
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {**bearer("1", ["1"])}
        if content_type:
            headers["Content-Type"] = content_type
        response = await client.post("/accounts/1/events", data=b'{"type": "T"}', headers=headers)
        assert (response.status, (await response.json())["error"]) == (
            415,
            "unsupported_media_type",
        )
