"""The engine's ports: what it needs from the outside world, as Protocols only.

Every adapter obeys the same contract, pinned by ``tests/contract``: the in-memory store raises
the same :class:`~engine.errors.ConcurrencyConflict` as the SQL one. Timestamps are naive UTC
``datetime`` values throughout (what ``DATETIME(6)`` and SQLite store).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from engine.history import Event, Projection, SagaRecord
from engine.listing import SagaCounts, SagaFilter, SagaPosition

__all__ = ["Clock", "HistoryStore", "Transport"]


@runtime_checkable
class Clock(Protocol):
    """Wall time and waiting; a fake one drives the unit tests."""

    def now(self) -> datetime:
        """Naive UTC now."""
        ...

    async def sleep(self, seconds: float) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """Request/reply to a service.

    Returns the reply payload. Raises :class:`~engine.errors.RemoteError` for an error reply
    (``{"type", "message", "non_retryable", "details"}``), :class:`~engine.errors.StepTimeout`
    when no reply came within ``timeout`` seconds, and
    :class:`~engine.errors.TransportError` when delivery failed. The receiver dedupes on
    ``idempotency_key``.
    """

    async def request(
        self,
        service: str,
        method: str,
        payload: dict[str, Any],
        *,
        timeout: float,
        idempotency_key: str,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]: ...


@runtime_checkable
class HistoryStore(Protocol):
    """Event-sourced saga history plus its ``saga_instances`` projection and leases.

    Fencing: every append names the ``version`` (lease epoch) and ``owner`` it was granted and
    the ``expected_seq`` of its first event; the store checks all three and writes the events
    and the projection in one transaction, or raises ``ConcurrencyConflict`` and writes nothing.
    """

    async def create(self, record: SagaRecord, events: Sequence[Event]) -> tuple[SagaRecord, bool]:
        """Insert a new saga (owned by ``record.owner``) with its first events.

        Returns ``(stored, created)``: when ``record.workflow_id`` is taken, the existing row and
        ``False``, nothing written.
        """
        ...

    async def append(
        self,
        saga_id: str,
        events: Sequence[Event],
        *,
        expected_seq: int,
        version: int,
        owner: str,
        projection: Projection,
        honour_cancel: bool = True,
    ) -> None:
        """Append ``events`` (seq ``expected_seq``…) and rewrite the projection atomically.

        Raises ``ConcurrencyConflict`` (seq taken, version or owner stale) and, when
        ``honour_cancel`` and a cancel is pending, ``CancelRequested``; either way nothing is
        written. ``projection.finished`` releases the lease in the same transaction.
        """
        ...

    async def load(self, saga_id: str) -> tuple[SagaRecord, list[Event]]:
        """The row and its whole history in seq order; ``SagaNotFound`` if absent."""
        ...

    async def get(self, workflow_id: str) -> SagaRecord | None: ...

    async def list(
        self,
        where: SagaFilter = SagaFilter(),
        *,
        after: SagaPosition | None = None,
        limit: int = 100,
    ) -> builtins.list[SagaRecord]:
        """Up to ``limit`` sagas matching ``where``, newest first (``created_at``, then
        ``saga_id``, descending), starting below ``after`` (see :mod:`engine.listing`)."""
        ...

    async def counts(self) -> SagaCounts:
        """Sagas per status and how many are flagged ``needs_operator``, in one query."""
        ...

    async def count_needing_operator(self) -> int:
        """How many sagas are flagged ``needs_operator`` (parked, or a compensation or a step
        past the pivot that keeps failing)."""
        ...

    async def list_claimable(
        self,
        *,
        owner: str,
        now: datetime,
        limit: int,
        workflows: Sequence[str] | None = None,
        known: bool = True,
    ) -> builtins.list[SagaRecord]:
        """Sagas to drive (unfinished, or parked with an operator's action waiting) with no
        owner, an expired lease, or owned by ``owner``; only those of ``workflows`` (or, with
        ``known=False``, only those of other workflows) when it is given. The one whose lease
        ran out first comes first (of two at the same instant, the one started first)."""
        ...

    async def acquire(
        self, saga_id: str, *, owner: str, expected_version: int, now: datetime, until: datetime
    ) -> int | None:
        """Take the lease if it is free, expired or ours and the version is unchanged.

        Returns the new fencing version (``expected_version + 1``) or ``None``.
        """
        ...

    async def renew(self, *, owner: str, saga_ids: Sequence[str], until: datetime) -> set[str]:
        """Extend ``owner``'s leases; returns the ids it still owns."""
        ...

    async def release(self, saga_id: str, *, owner: str, version: int) -> None: ...

    async def request_action(
        self, workflow_id: str, action: str, *, reason: str, now: datetime
    ) -> SagaRecord:
        """Write an operator's ``action`` on the saga's row as
        :func:`~engine.history.plan_action` says, checked in the same transaction; raises
        ``SagaNotFound`` or ``ActionRefused``. Returns the row as written."""
        ...

    async def operator_requests(self, saga_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The operator requests waiting on these sagas' rows, by saga id."""
        ...
