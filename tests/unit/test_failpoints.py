"""Failure points: parsed once, matched exactly, acted on at the N-th hit, test profile only."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from services._kit import failpoints
from services._kit.failpoints import FailpointError
from services._kit.settings import Settings


@pytest.fixture(autouse=True)
def disarmed() -> Iterator[None]:
    yield
    failpoints.arm(None, env="test")


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sent: list[int] = []
    monkeypatch.setattr(failpoints.os, "kill", lambda pid, sig: sent.append(sig))
    return sent


@pytest.mark.parametrize(
    ("spec", "point", "target", "count"),
    [
        ("crash_before_ack:payment", "crash_before_ack", "payment", 1),
        ("crash_before_publish:order", "crash_before_publish", "order", 1),
        ("crash_after_history:7", "crash_after_history", None, 7),
        (
            "crash_after_history:CompensationStarted:2",
            "crash_after_history",
            "CompensationStarted",
            2,
        ),
        ("freeze_before_history:StepCompleted:20", "freeze_before_history", "StepCompleted", 20),
        ("crash_before_reply:inventory", "crash_before_reply", "inventory", 1),
        ("crash_before_reply:payment:5", "crash_before_reply", "payment", 5),
    ],
)
def test_spellings_parse(spec: str, point: str, target: str | None, count: int) -> None:
    parsed = failpoints.parse(spec)
    assert (parsed.point, parsed.target, parsed.count) == (point, target, count)
    again = failpoints.parse(str(parsed))  # str() is a spelling parse() reads back
    assert (again.point, again.target, again.count) == (point, target, count)


def test_fail_compensation_parses_its_window() -> None:
    parsed = failpoints.parse("fail_compensation:payment.cancel_payment:30")
    assert (parsed.target, parsed.seconds) == ("payment.cancel_payment", 30.0)


@pytest.mark.parametrize(
    "spec",
    [
        "crash_before_ack",
        "crash_before_ack:warehouse",
        "crash_after_history:0",
        "crash_after_history:x",
        "crash_after_history:Step Scheduled:1",
        "crash_before_reply:payment:-1",
        "fail_compensation:cancel_payment:30",
        "fail_compensation:payment.cancel_payment:0",
        "fail_compensation:payment.cancel_payment:soon",
        "explode_now",
    ],
)
def test_misspelt_failpoints_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="failpoint"):
        failpoints.parse(spec)
    with pytest.raises(ValueError, match="failpoint"):
        Settings(_env_file=None, env="test", failpoint=spec)  # type: ignore[call-arg]


@pytest.mark.parametrize("env", ["dev", "prod"])
@pytest.mark.parametrize(
    "spec",
    [
        "crash_before_ack:payment",
        "crash_after_history:1",
        "crash_before_reply:payment",
        "fail_compensation:payment.cancel_payment:30",
    ],
)
def test_every_failpoint_is_refused_outside_the_test_profile(env: str, spec: str) -> None:
    with pytest.raises(ValueError, match="refused outside CLOUDMART_ENV=test"):
        Settings(_env_file=None, env=env, failpoint=spec)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="refused outside CLOUDMART_ENV=test"):
        failpoints.arm(spec, env=env)
    assert not failpoints.armed(spec.split(":")[0])


def test_nothing_happens_when_nothing_is_armed(kills: list[int]) -> None:
    failpoints.arm(None, env="prod")
    failpoints.hit("crash_before_reply", service="payment")
    failpoints.hit("crash_after_history", events=["StepScheduled"])
    failpoints.hit("fail_compensation", operation="payment.cancel_payment")
    assert kills == [] and not failpoints.armed("crash_before_reply")


def test_crash_before_reply_kills_at_the_nth_command_of_its_service(kills: list[int]) -> None:
    failpoints.arm("crash_before_reply:payment:3", env="test")
    assert failpoints.armed("crash_before_reply", service="payment")
    assert not failpoints.armed("crash_before_reply", service="inventory")
    for _ in range(5):
        failpoints.hit("crash_before_reply", service="inventory")
    failpoints.hit("crash_before_reply", service="payment")
    failpoints.hit("crash_before_reply", service="payment")
    assert kills == []
    failpoints.hit("crash_before_reply", service="payment")
    assert kills == [signal.SIGKILL]


def test_crash_after_history_counts_writes_or_writes_of_one_event_type(
    kills: list[int],
) -> None:
    failpoints.arm("crash_after_history:2", env="test")
    failpoints.hit("crash_after_history", events=["WorkflowStarted"])
    assert kills == []
    failpoints.hit("crash_after_history", events=["StepScheduled"])
    assert kills == [signal.SIGKILL]

    kills.clear()
    failpoints.arm("crash_after_history:CompensationStarted:1", env="test")
    assert failpoints.armed("crash_after_history")
    failpoints.hit("crash_after_history", events=["StepScheduled"])
    failpoints.hit("crash_after_history", events=["StepFailed"])
    assert kills == []
    failpoints.hit(
        "crash_after_history", events=["StepFailed", "CompensationStarted", "StepScheduled"]
    )
    assert kills == [signal.SIGKILL]


def test_fail_compensation_fails_that_operation_only_within_its_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(failpoints.time, "monotonic", lambda: clock[0])
    failpoints.arm("fail_compensation:payment.cancel_payment:30", env="test")
    failpoints.hit("fail_compensation", operation="payment.process_payment")
    with pytest.raises(FailpointError) as raised:
        failpoints.hit("fail_compensation", operation="payment.cancel_payment")
    assert raised.value.to_wire()["non_retryable"] is False
    clock[0] += 29.9
    with pytest.raises(FailpointError):
        failpoints.hit("fail_compensation", operation="payment.cancel_payment")
    clock[0] += 0.2
    failpoints.hit("fail_compensation", operation="payment.cancel_payment")


def test_freeze_before_history_stops_the_process_at_the_nth_matching_write(
    kills: list[int],
) -> None:
    failpoints.arm("freeze_before_history:StepCompleted:2", env="test")
    failpoints.hit("crash_after_history", events=["StepCompleted"])  # another point
    failpoints.hit("freeze_before_history", events=["StepCompleted", "StepScheduled"])
    failpoints.hit("freeze_before_history", events=["StepScheduled"])
    assert kills == []
    failpoints.hit("freeze_before_history", events=["StepCompleted", "WorkflowCompleted"])
    assert kills == [signal.SIGSTOP]


def test_the_choreography_gets_a_crash_hook_only_where_its_point_is_armed(
    kills: list[int],
) -> None:
    failpoints.arm(None, env="test")
    assert failpoints.event_hook("crash_before_ack", "payment") is None
    failpoints.arm("crash_before_ack:payment", env="test")
    assert failpoints.event_hook("crash_before_ack", "order") is None
    assert failpoints.event_hook("crash_before_publish", "payment") is None
    hook = failpoints.event_hook("crash_before_ack", "payment")
    assert hook is not None
    hook(object())
    assert kills == [signal.SIGKILL]


async def test_the_history_store_passes_by_failpoints_only_when_one_is_armed(
    tmp_path: Path,
) -> None:
    from activities.db import Database
    from engine.adapters import InMemoryTransport, SqlHistoryStore
    from services.orchestrator.main import engine_for

    db = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'history.db'}")
    settings = Settings(_env_file=None, env="test")  # type: ignore[call-arg]

    def engine_store() -> object:
        engine = engine_for(settings, db, InMemoryTransport({}))
        return engine.store

    try:
        assert failpoints.history_hook() is None
        assert type(engine_store()) is SqlHistoryStore  # nothing armed: no detour at all
        for spec in ("crash_after_history:3", "freeze_before_history:StepCompleted:1"):
            failpoints.arm(spec, env="test")
            assert type(engine_store()) is not SqlHistoryStore
        armed = failpoints.arm("freeze_before_history:StepCompleted:5", env="test")
        assert armed is not None
        hook = failpoints.history_hook()
        assert hook is not None
        hook("freeze_before_history", ["StepScheduled"])  # another write: not counted
        hook("crash_after_history", ["StepCompleted"])  # another point: not counted
        assert armed.hits == 0
        hook("freeze_before_history", ["StepScheduled", "StepCompleted"])
        assert armed.hits == 1  # the first of the five that freeze
    finally:
        await db.dispose()
