"""The Transport contract, parametrised over adapter factories.

A factory takes ``{"service.method": async handler(payload) -> reply}`` and returns an async
context manager yielding a Transport whose requests reach those handlers: in memory, and over
the real RabbitMQ (a command server per service, queues deleted afterwards).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from engine.adapters import InMemoryTransport
from engine.errors import RemoteError, StepTimeout, TransientError
from engine.ports import Transport

Handlers = dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]


@contextlib.asynccontextmanager
async def in_memory(handlers: Handlers) -> AsyncIterator[Transport]:
    yield InMemoryTransport(handlers)


@contextlib.asynccontextmanager
async def rabbitmq(handlers: Handlers) -> AsyncIterator[Transport]:
    from rabbitmq_support import rabbitmq_transport_pair, unique_namespace

    async with rabbitmq_transport_pair(handlers, unique_namespace()) as transport:
        yield transport


FACTORIES = {"memory": in_memory, "rabbitmq": rabbitmq}


@pytest.fixture(params=sorted(FACTORIES))
def make_transport(request: pytest.FixtureRequest) -> Any:
    return FACTORIES[request.param]


class StockUnavailable(Exception):
    non_retryable = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.details = {"book_id": 3}


async def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return {"echo": payload}


async def refuse(payload: dict[str, Any]) -> dict[str, Any]:
    raise StockUnavailable("only 1 left")


async def crash(payload: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("database is down")


async def hang(payload: dict[str, Any]) -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}


HANDLERS: Handlers = {"inv.echo": echo, "inv.refuse": refuse, "inv.crash": crash, "inv.hang": hang}


async def test_request_returns_the_reply_payload(make_transport: Any) -> None:
    async with make_transport(HANDLERS) as transport:
        payload = {"order_id": "o-1", "items": [{"book_id": 1, "quantity": 2}], "t": "日本"}
        reply = await transport.request(
            "inv", "echo", payload, timeout=5, idempotency_key="o-1:echo", headers={"saga_id": "s"}
        )
        assert reply == {"echo": payload}


async def test_business_error_crosses_the_wire_non_retryable(make_transport: Any) -> None:
    async with make_transport(HANDLERS) as transport:
        with pytest.raises(RemoteError) as caught:
            await transport.request("inv", "refuse", {}, timeout=5, idempotency_key="k")
    error = caught.value
    assert (error.type, error.non_retryable, error.details) == (
        "StockUnavailable",
        True,
        {"book_id": 3},
    )
    assert error.to_wire() == {
        "type": "StockUnavailable",
        "message": "only 1 left",
        "non_retryable": True,
        "details": {"book_id": 3},
    }


async def test_unexpected_error_crosses_the_wire_retryable(make_transport: Any) -> None:
    async with make_transport(HANDLERS) as transport:
        with pytest.raises(RemoteError) as caught:
            await transport.request("inv", "crash", {}, timeout=5, idempotency_key="k")
    assert (caught.value.type, caught.value.non_retryable) == ("RuntimeError", False)
    assert caught.value.retryable


async def test_no_reply_within_the_timeout_is_a_transient_step_timeout(
    make_transport: Any,
) -> None:
    async with make_transport(HANDLERS) as transport:
        with pytest.raises(StepTimeout) as caught:
            await transport.request("inv", "hang", {}, timeout=0.2, idempotency_key="k")
    assert isinstance(caught.value, TransientError)


async def test_concurrent_requests_get_their_own_replies(make_transport: Any) -> None:
    async with make_transport(HANDLERS) as transport:
        replies = await asyncio.gather(
            *(
                transport.request("inv", "echo", {"n": n}, timeout=5, idempotency_key=f"k{n}")
                for n in range(20)
            )
        )
    assert [r["echo"]["n"] for r in replies] == list(range(20))
