"""The kit's ASGI layers on a bare echo application: body limit and bearer-token guard."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from services._kit._middleware import ApiKeyGuard, BodyLimit

LIMIT = 1024


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer 200 with the request body it received."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def client_for(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")  # type: ignore[arg-type]


async def chunks(total: int, size: int = 100) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b"x" * piece


@pytest.mark.parametrize("size", [0, 1, LIMIT])
async def test_body_up_to_the_limit_reaches_the_app_intact(size: int) -> None:
    async with client_for(BodyLimit(echo, max_bytes=LIMIT)) as client:
        response = await client.post("/", content=b"y" * size)

    assert response.status_code == 200
    assert response.content == b"y" * size


async def test_declared_length_over_the_limit_is_413_before_reading() -> None:
    async with client_for(BodyLimit(echo, max_bytes=LIMIT)) as client:
        response = await client.post("/", content=b"y" * (LIMIT + 1))

    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


async def test_chunked_body_is_counted_as_it_streams() -> None:
    async with client_for(BodyLimit(echo, max_bytes=LIMIT)) as client:
        small = await client.post("/", content=chunks(LIMIT))
        large = await client.post("/", content=chunks(LIMIT + 1))

    assert "content-length" not in large.request.headers
    assert small.status_code == 200 and len(small.content) == LIMIT
    assert large.status_code == 413 and large.json()["details"] == {"max_bytes": LIMIT}


async def test_understated_content_length_cannot_smuggle_a_large_body() -> None:
    seen: list[int] = []

    async def counting(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(1)
        await echo(scope, receive, send)

    limit = BodyLimit(counting, max_bytes=LIMIT)
    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", b"10")]}
    messages = [
        {"type": "http.request", "body": b"x" * 600, "more_body": True},
        {"type": "http.request", "body": b"x" * 600, "more_body": False},
    ]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await limit(scope, receive, send)  # type: ignore[arg-type]

    assert seen == []
    assert sent[0]["status"] == 413


@pytest.mark.parametrize("value", ["abc", "-5", "1.5"])
async def test_invalid_content_length_is_400(value: str) -> None:
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        raise AssertionError("the body must not be read")

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", value.encode())]}
    await BodyLimit(echo, max_bytes=LIMIT)(scope, receive, send)  # type: ignore[arg-type]

    assert sent[0]["status"] == 400


async def test_client_gone_before_the_body_ends_never_reaches_the_app() -> None:
    async def unreachable(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("the app must not run")

    messages = [
        {"type": "http.request", "body": b"x", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[object] = []

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    async def send(message: object) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": []}
    await BodyLimit(unreachable, max_bytes=LIMIT)(scope, receive, send)  # type: ignore[arg-type]

    assert sent == []


@pytest.mark.parametrize(
    ("method", "path", "authorization", "status"),
    [
        ("GET", "/orders/o-1", None, 401),
        ("HEAD", "/orders/o-1", None, 401),
        ("GET", "/orders/o-1", "Bearer key", 200),
        ("GET", "/health", None, 200),
        ("GET", "/metrics", None, 200),
        ("GET", "/openapi.json", None, 200),
        ("GET", "/docs", None, 200),
        ("POST", "/health", None, 200),  # open paths are open (the app answers 405 itself)
        ("POST", "/", None, 401),
        ("PUT", "/", "Bearer nope", 401),
        ("DELETE", "/", "Bearer key", 200),
        ("PATCH", "/", "bearer key", 200),
        ("POST", "/", "Bearer  key ", 200),
        ("POST", "/", "Token key", 401),
        ("POST", "/", "Bearer key\u00e9", 401),
        ("GET", "/healthz", None, 401),  # only the exact open paths
    ],
)
async def test_api_key_guard_lets_only_open_paths_through_without_the_key(
    method: str, path: str, authorization: str | None, status: int
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization.encode("latin-1")}
    async with client_for(ApiKeyGuard(echo, api_key="key")) as client:
        response = await client.request(method, path, headers=headers)

    assert response.status_code == status
    if status == 401 and method != "HEAD":  # a HEAD answer has no body
        assert response.json()["error"] == "unauthorized"
        assert "key" not in response.json()["message"].replace("<CLOUDMART_API_KEY>", "")
