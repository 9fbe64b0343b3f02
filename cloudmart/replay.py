"""``cloudmart replay``: replay recorded histories against the workflows deployed now.

Histories come from the database (``saga_instances`` filtered by status, workflow, age, with
a limit; newest first) or from files written by ``cloudmart saga export``. Nothing is sent and
nothing is written (:mod:`engine.replay`); each saga gets one line, matching or diverged with
where and how, and the command exits 1 when any diverged, so that it can gate a deploy.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from engine.adapters import SqlHistoryStore
from engine.history import Event
from engine.listing import SagaFilter
from engine.replay import Replayed, read_history_file, replay
from engine.workflow import Workflow

__all__ = ["from_database", "from_files", "render", "replay_all"]

History = tuple[str, list[Event]]


async def from_database(
    engine: AsyncEngine,
    *,
    statuses: Sequence[str] = (),
    workflow: str | None = None,
    since: datetime | None = None,
    limit: int = 1000,
) -> AsyncIterator[History]:
    """The histories of the newest ``limit`` sagas that pass the filters."""
    store = SqlHistoryStore(engine)
    where = SagaFilter(statuses=tuple(statuses), workflow=workflow, created_after=since)
    for record in await store.list(where, limit=limit):
        _, events = await store.load(record.saga_id)
        yield record.workflow_id, events


async def from_files(paths: Sequence[Path]) -> AsyncIterator[History]:
    for path in paths:
        yield read_history_file(json.loads(path.read_text()))


async def replay_all(
    workflows: Sequence[Workflow], histories: AsyncIterator[History]
) -> list[Replayed]:
    return [
        await replay(workflows, events, workflow_id=workflow_id)
        async for workflow_id, events in histories
    ]


def render(results: Sequence[Replayed]) -> str:
    """One line per saga, then a summary."""
    lines = [
        f"{r.workflow_id}  {r.workflow}  "
        + ("matching" if r.matching else f"DIVERGED: {r.divergence}")
        for r in results
    ]
    diverged = sum(not r.matching for r in results)
    lines.append(
        f"{len(results)} replayed, {len(results) - diverged} matching, {diverged} diverged"
    )
    return "\n".join(lines)
