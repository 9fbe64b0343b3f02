"""Infrastructure faults: which errors they are, and how a consumer waits one out.

An error is an *infrastructure fault* when the work failed because something under it did not
answer: the database (unreachable, a dropped connection, no pooled connection in time, a
deadlock or lock-wait timeout that outlived :meth:`activities.db.Database.transaction`'s own
retries), a broker (RabbitMQ, Redis) or the network beneath them. The same work succeeds once
the fault heals, so a message consumer waits it out — holding the message, backing off — and
never counts it against the message's delivery limit. Everything else a handler raises is
either an answer (a :class:`~activities.errors.DomainError`: the operation said no) or a
message that cannot succeed (a bug, a payload no code can act on), which counts.

::

    dependency_of(exc)          "database" | "rabbitmq" | "redis" | "network" | None
    is_infrastructure_fault()   dependency_of(exc) is not None: the one classifier, used by
                                the command server, the event consumers, the outbox relay and
                                the HTTP layer (503)
    Backoff                     capped exponential delays with jitter
    Outages                     one per process: whether each dependency is down; logs once
                                when it goes and once when it is back (with how long it was
                                gone), counts the retries and the messages being waited out

The classifier looks through ``__cause__`` too: an adapter that wraps a driver error (the
engine's ``StoreUnavailable``, a ``TransportError``) keeps the fault it wraps.
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import structlog
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import exc as sa_exc

from activities.errors import DomainError
from prepared_sql import is_lock_conflict

__all__ = [
    "DATABASE",
    "NETWORK",
    "RABBITMQ",
    "REDIS",
    "Backoff",
    "Outages",
    "dependency_of",
    "is_infrastructure_fault",
]

T = TypeVar("T")
log = structlog.get_logger("activities.faults")

DATABASE = "database"
RABBITMQ = "rabbitmq"
REDIS = "redis"
NETWORK = "network"

# What an OSError that is not a ConnectionError says when the network failed under it.
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ENETUNREACH,
        errno.ENETDOWN,
    }
)


# What uvloop says when something writes to a transport that was closed under it.
_CLOSED_TRANSPORT = "the handler is closed"


def dependency_of(exc: BaseException) -> str | None:
    """The dependency whose fault ``exc`` is, or None when it is no infrastructure fault."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _dependency(current)
        if found is not None:
            return found
        current = current.__cause__
    return None


def is_infrastructure_fault(exc: BaseException) -> bool:
    """True when ``exc`` says a database, broker or network did not answer (module docstring)."""
    return dependency_of(exc) is not None


def _dependency(exc: BaseException) -> str | None:
    if isinstance(exc, DomainError):
        return None
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return DATABASE  # no pooled connection in time; a connection that failed its ping
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return DATABASE  # unreachable, connection lost, deadlock or lock wait past retries
    if isinstance(exc, sa_exc.DBAPIError):
        # A bare DBAPIError is a driver error SQLAlchemy could not classify (a dropped
        # connection, usually); IntegrityError, DataError and the like are bugs, not outages.
        if exc.connection_invalidated or type(exc) is sa_exc.DBAPIError or is_lock_conflict(exc):
            return DATABASE
        return None
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return REDIS
    if isinstance(exc, AMQPError | ChannelInvalidStateError):
        return RABBITMQ
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return NETWORK
    if isinstance(exc, OSError) and (
        exc.errno in _NETWORK_ERRNOS or "Connect call failed" in str(exc)
    ):
        return NETWORK
    if isinstance(exc, RuntimeError) and _CLOSED_TRANSPORT in str(exc):
        # uvloop's answer to a write on a connection the peer reset: the driver (aiomysql)
        # lets it through as it is, from SQLAlchemy's rollback of the failed transaction too.
        return NETWORK
    return None


@dataclass(frozen=True)
class Backoff:
    """Delays ``initial × 2^n``, capped at ``maximum``, each drawn in [½, 1] of itself."""

    initial: float = 0.1
    maximum: float = 5.0

    def delay(self, attempt: int) -> float:
        """The pause after the ``attempt``-th failure (1-based)."""
        ceiling = min(self.maximum, self.initial * 2 ** max(0, attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


INFRASTRUCTURE_BACKOFF = Backoff()


class Outages:
    """Which dependencies are down now, as this process saw them (see the module docstring).

    ``wait_out`` pauses ``backoff`` between attempts. ``lost(dependency, exc)`` and
    ``restored(dependency)`` log only a change of state, so an
    outage of any length costs two lines. ``retries`` counts the attempts made again after a
    fault, ``waiting`` the messages being held until a dependency is back, ``outages`` the
    outages seen; metrics read all three.
    """

    def __init__(
        self,
        *,
        backoff: Backoff = INFRASTRUCTURE_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backoff = backoff
        self._clock = clock
        self._down: dict[str, float] = {}
        self.retries: Counter[str] = Counter()
        self.waiting: Counter[str] = Counter()
        self.outages: Counter[str] = Counter()

    def is_down(self, dependency: str) -> bool:
        return dependency in self._down

    @property
    def down(self) -> frozenset[str]:
        return frozenset(self._down)

    def lost(self, dependency: str, exc: BaseException | None = None, **context: object) -> None:
        """``dependency`` failed; logged only when it was up until now."""
        if dependency in self._down:
            return
        self._down[dependency] = self._clock()
        self.outages[dependency] += 1
        log.warning(
            "dependency.lost",
            dependency=dependency,
            error_type=type(exc).__name__ if exc is not None else None,
            error=str(exc)[:300] if exc is not None else None,
            **context,
        )

    def restored(self, dependency: str) -> None:
        """``dependency`` answered again; logged (with how long it was gone) only after a loss.

        A server that answers proves the network under it works too: a fault that could only
        be called a ``network`` one (a reset connection, without saying to what) ends with it.
        """
        since = self._down.pop(dependency, None)
        if since is not None:
            log.info(
                "dependency.restored",
                dependency=dependency,
                down_seconds=round(self._clock() - since, 1),
            )
        if dependency != NETWORK:
            self.restored(NETWORK)

    def restore_all(self, dependencies: set[str]) -> None:
        """Each of ``dependencies`` answered again (the work that failed on them succeeded);
        the set is emptied."""
        for dependency in sorted(dependencies):
            self.restored(dependency)
        dependencies.clear()

    @contextmanager
    def holding(self, dependency: str) -> Iterator[None]:
        """Count one message held while ``dependency`` is away."""
        self.waiting[dependency] += 1
        try:
            yield
        finally:
            self.waiting[dependency] -= 1

    async def wait_out(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        on_fault: Callable[[str], Awaitable[None]] | None = None,
        **context: object,
    ) -> T:
        """Run ``attempt`` until it returns or raises something other than an infrastructure
        fault; after a fault, pause (:attr:`backoff`) and run it again, for as long as it takes.

        ``on_fault(dependency)`` runs at each pause (a consumer keeps its message's claim
        fresh there). Cancellation ends the wait; the message, never acknowledged, stays
        where it was.
        """
        failures = 0
        lost: set[str] = set()
        while True:
            try:
                result = await attempt()
            except Exception as exc:
                dependency = dependency_of(exc)
                if dependency is None:
                    self.restore_all(lost)  # it answered, with something else
                    raise
                failures += 1
                lost.add(dependency)
                self.lost(dependency, exc, **context)
                with self.holding(dependency):
                    if on_fault is not None:
                        await on_fault(dependency)
                    await asyncio.sleep(self.backoff.delay(failures))
                self.retries[dependency] += 1
                continue
            self.restore_all(lost)
            return result
