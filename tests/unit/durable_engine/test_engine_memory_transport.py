"""InMemoryTransport's fault injection and request context."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from engine.adapters.memory_transport import Fault, InMemoryTransport, current_request
from engine.clock import FakeClock
from engine.errors import StepTimeout, TransportError


def counting() -> tuple[list[str], InMemoryTransport]:
    seen: list[str] = []

    async def handle(payload: dict[str, Any]) -> dict[str, Any]:
        info = current_request()
        assert info is not None
        seen.append(f"{info.idempotency_key}/{info.headers.get('attempt')}")
        return {"n": len(seen)}

    return seen, InMemoryTransport({"svc.op": handle}, clock=FakeClock())


async def request(transport: InMemoryTransport) -> dict[str, Any]:
    return await transport.request(
        "svc", "op", {}, timeout=5, idempotency_key="o:op", headers={"attempt": "1"}
    )


async def test_duplicate_delivers_twice_and_replies_once() -> None:
    seen, transport = counting()
    transport.inject("svc.op", Fault("duplicate"))
    assert await request(transport) == {"n": 2}
    assert seen == ["o:op/1", "o:op/1"]


async def test_drop_reply_runs_the_handler_then_times_out() -> None:
    seen, transport = counting()
    transport.inject("svc.op", Fault("drop_reply"))
    with pytest.raises(StepTimeout):
        await request(transport)
    assert seen == ["o:op/1"]


async def test_transient_fault_does_not_deliver_and_applies_times_then_clears() -> None:
    seen, transport = counting()
    transport.inject("svc.op", Fault("transient", times=2))
    for _ in range(2):
        with pytest.raises(TransportError):
            await request(transport)
    assert await request(transport) == {"n": 1}
    assert seen == ["o:op/1"]


async def test_delay_past_the_timeout_times_out_and_delivers_late() -> None:
    seen, transport = counting()
    clock = transport._clock
    assert isinstance(clock, FakeClock)
    transport.inject("svc.op", Fault("delay", seconds=30))
    pending = request(transport)
    task = asyncio.ensure_future(pending)
    await asyncio.sleep(0)
    clock.advance(5)
    with pytest.raises(StepTimeout):
        await task
    assert seen == []
    clock.advance(30)
    await transport.drain()
    assert seen == ["o:op/1"]
