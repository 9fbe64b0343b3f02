"""Replay a recorded history against workflow code, offline: nothing is sent, written or
waited for. It answers the question a deploy must ask first — would today's code, given this
saga's history, ask for what the history holds? — the way a live run would when it recovers
the saga, without touching the saga.

:func:`replay` runs the workflow body on the history's recorded answers up to its end (or to
where the saga would go on live): each step's kind, name and input digest must match the
history at its position. A divergence is reported as the live run would park the saga: which
position, what history holds, what the code asked for (for an input, which fields differ).
:func:`history_file` and :func:`read_history_file` are the file format of
``cloudmart saga export`` and ``cloudmart replay FILE``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from engine._runtime import RunConfig, RunDeps, _Run
from engine.clock import SystemClock
from engine.history import Event, EventType, SagaRecord
from engine.observer import EngineCounters, NullObserver
from engine.workflow import RetryPolicy, Workflow, workflow_name

__all__ = ["Replayed", "history_file", "read_history_file", "replay"]


@dataclasses.dataclass(frozen=True)
class Replayed:
    """One history replayed: ``divergence`` is ``None`` when it matches the code."""

    workflow_id: str
    workflow: str
    events: int
    divergence: str | None

    @property
    def matching(self) -> bool:
        return self.divergence is None


class _Nowhere:
    """The store and transport of an offline replay: touching either is a bug."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"an offline replay used {name!r}")


_OFFLINE = RunConfig(
    owner="replay",
    step_retry=RetryPolicy(),
    compensation_retry=RetryPolicy(max_attempts=None),
    default_step_timeout=1.0,
    compensation_alert_attempts=1,
)


async def replay(
    workflows: Iterable[Workflow], events: Sequence[Event], *, workflow_id: str
) -> Replayed:
    """Replay ``events`` (a whole history, ``WorkflowStarted`` first) of the saga
    ``workflow_id`` against the workflow it names among ``workflows``."""
    if not events or events[0].type != EventType.WORKFLOW_STARTED:
        raise ValueError("a history starts with its WorkflowStarted event")
    started = events[0]
    name = str(started.payload.get("workflow"))
    input_ = started.payload.get("input")
    known = {workflow_name(wf): wf for wf in workflows}
    body = known.get(name)
    if body is None:
        return Replayed(workflow_id, name, len(events), f"no workflow named {name!r} is deployed")
    record = SagaRecord(
        saga_id="replay",
        workflow_id=workflow_id,
        workflow_name=name,
        status="STARTED",
        input=input_,
        created_at=started.created_at,
    )
    nowhere: Any = _Nowhere()
    deps = RunDeps(nowhere, nowhere, SystemClock(), NullObserver(), EngineCounters(), _ignore)
    run = _Run(_OFFLINE, deps, body, record, list(events), 0, offline=True)
    await run.run()
    return Replayed(workflow_id, name, len(events), run.divergence)


def _ignore(record: SagaRecord, events: list[Event]) -> None:
    raise AssertionError("an offline replay finished a saga")


def history_file(workflow_id: str, events: Sequence[Event]) -> dict[str, Any]:
    """A saga's history as the JSON ``cloudmart saga export`` writes."""
    return {
        "workflow_id": workflow_id,
        "events": [
            {
                **dataclasses.asdict(e),
                "created_at": None if e.created_at is None else e.created_at.isoformat(),
            }
            for e in events
        ],
    }


def read_history_file(data: dict[str, Any]) -> tuple[str, list[Event]]:
    """``(workflow_id, events)`` of a history file (see :func:`history_file`)."""
    fields = {f.name for f in dataclasses.fields(Event)}
    events = []
    for row in data["events"]:
        values = {k: v for k, v in row.items() if k in fields}
        when = values.get("created_at")
        if isinstance(when, str):
            values["created_at"] = datetime.fromisoformat(when.replace("Z", "+00:00")).replace(
                tzinfo=None
            )
        events.append(Event(**values))
    return str(data["workflow_id"]), events
