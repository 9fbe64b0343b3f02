"""``cloudmart replay``: replay recorded histories against the workflows deployed now.

Histories come from the database (``saga_instances`` filtered by status, workflow, age, with
a limit; newest first) or from files written by ``cloudmart saga export``. Nothing is sent and
nothing is written (:mod:`engine.replay`); each saga gets one line, matching or diverged with
where and how, and the command exits 1 when any diverged, so that it can gate a deploy.

:func:`lint` (``cloudmart replay --lint``) reads the modules that define the workflows for
calls replay cannot repeat: every function of theirs, so a helper a workflow body calls is
checked too, where ``@workflow`` checks only the body.
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from engine.adapters import SqlHistoryStore
from engine.history import Event
from engine.listing import SagaFilter
from engine.replay import Replayed, read_history_file, replay
from engine.workflow import NondeterministicCall, Workflow, nondeterministic_calls

__all__ = ["from_database", "from_files", "lint", "render", "render_lint", "replay_all"]

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


def lint(workflows: Sequence[Workflow]) -> list[NondeterministicCall]:
    """The calls replay cannot repeat in the modules that define ``workflows``: in each of
    their module-level functions (nested ones included), by module, then line."""
    found: dict[tuple[str, int, str], NondeterministicCall] = {}
    for name in sorted({wf.__module__ for wf in workflows}):
        module = sys.modules[name]
        for _, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ != name:
                continue  # imported from elsewhere
            for call in nondeterministic_calls(function):
                # A nested function exposed at module level is also read with its parent.
                found.setdefault((call.filename, call.line, call.call), call)
    return [found[key] for key in sorted(found)]


def render_lint(found: Sequence[NondeterministicCall]) -> str:
    """One line per call (``file:line: function calls name(); use ...``), then a summary."""
    lines = [
        f"{c.filename}:{c.line}: {c.function} calls {c.call}(); a workflow must be "
        f"deterministic: use {c.use}"
        for c in found
    ]
    lines.append(f"{len(found)} call(s) that replay cannot repeat")
    return "\n".join(lines)
