"""The one classifier of infrastructure faults, and how :class:`Outages` waits one out."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

import pytest
import structlog
from aio_pika.exceptions import AMQPConnectionError, ChannelInvalidStateError
from conftest import until
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import exc as sa_exc

from activities.errors import InvalidCommand, StockUnavailable
from activities.faults import (
    DATABASE,
    NETWORK,
    RABBITMQ,
    REDIS,
    Backoff,
    Outages,
    dependency_of,
    is_infrastructure_fault,
)


def _mysql(cls: type[sa_exc.DBAPIError], code: int, text: str) -> sa_exc.DBAPIError:
    return cls("UPDATE inventory ...", {}, Exception(code, text))


def _caused_by(error: Exception, cause: BaseException) -> Exception:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("exc", "dependency"),
    [
        (_mysql(sa_exc.OperationalError, 2003, "Can't connect to MySQL server"), DATABASE),
        (_mysql(sa_exc.OperationalError, 2013, "Lost connection to server"), DATABASE),
        (_mysql(sa_exc.OperationalError, 1213, "Deadlock found"), DATABASE),
        (_mysql(sa_exc.OperationalError, 1205, "Lock wait timeout exceeded"), DATABASE),
        (_mysql(sa_exc.InterfaceError, 0, "connection closed"), DATABASE),
        (sa_exc.TimeoutError("QueuePool limit reached"), DATABASE),
        (sa_exc.DisconnectionError("ping failed"), DATABASE),
        (sa_exc.DBAPIError("x", {}, Exception(), connection_invalidated=True), DATABASE),
        (RedisConnectionError("Error 111 connecting"), REDIS),
        (RedisTimeoutError("Timeout reading"), REDIS),
        (AMQPConnectionError("connection refused"), RABBITMQ),
        (ChannelInvalidStateError("channel closed"), RABBITMQ),
        (ConnectionResetError(), NETWORK),
        (TimeoutError(), NETWORK),
        (socket.gaierror("name unknown"), NETWORK),
        (OSError(errno.EHOSTUNREACH, "No route to host"), NETWORK),
        (OSError("Multiple exceptions: [Errno 111] Connect call failed"), NETWORK),
        (
            RuntimeError(
                "unable to perform operation on <TCPTransport closed=True reading=False "
                "0x5644071f6990>; the handler is closed"
            ),
            NETWORK,
        ),
        # a wrapper keeps the fault it wraps
        (_caused_by(RuntimeError("store"), _mysql(sa_exc.OperationalError, 2003, "")), DATABASE),
    ],
)
def test_an_infrastructure_fault_names_its_dependency(exc: BaseException, dependency: str) -> None:
    assert dependency_of(exc) == dependency
    assert is_infrastructure_fault(exc)


@pytest.mark.parametrize(
    "exc",
    [
        _mysql(sa_exc.IntegrityError, 1062, "Duplicate entry"),
        _mysql(sa_exc.DataError, 1406, "Data too long"),
        _mysql(sa_exc.ProgrammingError, 1146, "Table doesn't exist"),
        StockUnavailable("no stock"),  # a business refusal is an answer
        InvalidCommand("bad payload"),
        ValueError("malformed"),
        KeyError("order_id"),
        RuntimeError("a bug"),
        FileNotFoundError(errno.ENOENT, "no such file"),
        ResponseError("WRONGTYPE"),
        _caused_by(RuntimeError("wrapped"), ValueError("still a bug")),
    ],
)
def test_anything_else_is_no_infrastructure_fault(exc: BaseException) -> None:
    assert dependency_of(exc) is None
    assert not is_infrastructure_fault(exc)


def test_a_cause_cycle_ends() -> None:
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__cause__, second.__cause__ = second, first
    assert dependency_of(first) is None


def test_backoff_grows_and_stays_under_its_cap() -> None:
    backoff = Backoff(initial=0.1, maximum=2.0)
    assert 0.05 <= backoff.delay(1) <= 0.1
    assert 0.4 <= backoff.delay(4) <= 0.8
    assert all(1.0 <= backoff.delay(n) <= 2.0 for n in range(6, 60))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_logged_once_when_it_begins_and_once_when_it_ends() -> None:
    clock = Clock()
    outages = Outages(clock=clock)
    with structlog.testing.capture_logs() as logs:
        for _ in range(1000):
            outages.lost(DATABASE, sa_exc.TimeoutError("no connection"))
        clock.now += 42.5
        outages.restored(DATABASE)
        outages.restored(DATABASE)  # already up: nothing to say
    assert [entry["event"] for entry in logs] == ["dependency.lost", "dependency.restored"]
    assert logs[0]["dependency"] == DATABASE and logs[0]["error_type"] == "TimeoutError"
    assert logs[1]["down_seconds"] == 42.5
    assert outages.outages[DATABASE] == 1 and not outages.is_down(DATABASE)


def test_a_server_answering_again_ends_a_fault_of_the_network_under_it() -> None:
    outages = Outages()
    outages.lost(NETWORK, ConnectionResetError())
    outages.lost(DATABASE, sa_exc.TimeoutError())
    outages.restored(DATABASE)
    assert outages.down == frozenset()


async def test_wait_out_runs_again_after_faults_and_returns_the_result() -> None:
    outages = Outages(backoff=Backoff(initial=0.001, maximum=0.002))
    calls = 0
    waiting_seen: list[int] = []

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls <= 5:
            raise _mysql(sa_exc.OperationalError, 2003, "Can't connect to MySQL server")
        return "done"

    async def on_fault(dependency: str) -> None:
        waiting_seen.append(outages.waiting[dependency])

    with structlog.testing.capture_logs() as logs:
        assert await outages.wait_out(attempt, on_fault=on_fault) == "done"
    assert calls == 6
    assert outages.retries[DATABASE] == 5
    assert waiting_seen == [1] * 5 and outages.waiting[DATABASE] == 0  # held while paused
    assert [entry["event"] for entry in logs] == ["dependency.lost", "dependency.restored"]


async def test_wait_out_raises_what_is_no_fault_at_once() -> None:
    outages = Outages(backoff=Backoff(initial=0.001, maximum=0.002))
    calls = 0

    async def attempt() -> Any:
        nonlocal calls
        calls += 1
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        await outages.wait_out(attempt)
    assert calls == 1 and outages.retries == {}


async def test_wait_out_ends_on_cancellation_with_nothing_held() -> None:
    outages = Outages(backoff=Backoff(initial=0.001, maximum=0.002))

    async def attempt() -> None:
        raise ConnectionRefusedError()

    task = asyncio.create_task(outages.wait_out(attempt))
    await until(lambda: outages.retries[NETWORK] >= 3, timeout=5, interval=0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outages.waiting[NETWORK] == 0
