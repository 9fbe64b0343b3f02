"""Logging: configured once, JSON in prod, each request's lines carry its request id."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import structlog
from asgi_lifespan import LifespanManager
from fastapi import APIRouter

import services._kit.logging as kit_logging
from services._kit import Settings, configure_logging, create_app
from services._kit.logging import request_id_from


def ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_cloudmart", False)]


@pytest.fixture
def fresh_logging() -> Iterator[None]:
    """Let the test reconfigure logging; the next app built reconfigures it back."""
    kit_logging._configured_as = None
    yield
    kit_logging._configured_as = None


def test_configure_logging_is_idempotent(fresh_logging: None) -> None:
    settings = Settings(_env_file=None, log_json=False)  # type: ignore[call-arg]

    configure_logging(settings)
    first = ours()
    configure_logging(settings)

    assert len(first) == 1
    assert ours() == first


def test_reconfiguring_replaces_the_handler_instead_of_adding_one(fresh_logging: None) -> None:
    configure_logging(Settings(_env_file=None, log_json=False))  # type: ignore[call-arg]
    configure_logging(Settings(_env_file=None, log_json=True))  # type: ignore[call-arg]

    assert len(ours()) == 1


async def test_prod_logs_are_json_lines_bound_to_the_request_id(
    fresh_logging: None, tmp_path: Path
) -> None:
    router = APIRouter()

    @router.get("/work")
    async def work() -> dict[str, str]:
        structlog.get_logger("test").info("work.done", order_id="o-1")
        return {"ok": "yes"}

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        env="prod",
        api_key="k",
        database_url=f"sqlite+aiosqlite:///{tmp_path}/log.db",
    )
    app = create_app("test", settings, router)
    stream = io.StringIO()
    (handler,) = ours()
    assert isinstance(handler, logging.StreamHandler)
    previous = handler.setStream(stream)
    try:
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://t"
            ) as client,
        ):
            response = await client.get(
                "/work", headers={"X-Request-ID": "req-42", "Authorization": "Bearer k"}
            )
    finally:
        handler.setStream(previous)

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    done = next(line for line in lines if line["event"] == "work.done")
    access = next(line for line in lines if line["event"] == "http.request")
    assert response.headers["x-request-id"] == "req-42"
    assert done["request_id"] == "req-42" and done["order_id"] == "o-1"
    assert done["service"] == "test"
    assert access["request_id"] == "req-42" and access["route"] == "/work"
    assert access["status"] == 200


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-123", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("x y", False),
        ("", False),
        (None, False),
        ("id\r\nSet-Cookie: x", False),
    ],
)
def test_request_id_from_keeps_only_tame_ids(given: str | None, kept: bool) -> None:
    result = request_id_from(given)

    assert (result == given) is kept
    assert 1 <= len(result) <= 128
