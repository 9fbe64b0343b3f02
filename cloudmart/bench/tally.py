"""What a bench run counts while it runs (:class:`Tally`), and the result it adds up to."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloudmart.bench import where
from cloudmart.bench.figures import BenchResult, floor_ms, percentiles, quantiles

__all__ = ["TERMINAL", "Tally", "result_of"]

TERMINAL = ("COMPLETED", "FAILED")


@dataclass
class Tally:
    """What a run has seen so far: latencies, outcomes, REST timings, the orders it started."""

    latencies: list[float] = field(default_factory=list)
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    starts: list[float] = field(default_factory=list)
    reads: list[float] = field(default_factory=list)
    polls: list[float] = field(default_factory=list)
    http_errors: int = 0
    order_ids: list[str] = field(default_factory=list)
    done: int = 0

    def count(self, outcome: str) -> int:
        """Sagas that ended ``outcome``, over every kind of order."""
        return sum(c[outcome] for c in self.outcomes.values())


def result_of(
    tally: Tally,
    kinds: list[str],
    wall: float,
    *,
    pattern: str,
    concurrency: int,
    rate: float | None,
    mix: dict[str, float],
    verdict: dict[str, Any] | None,
    rollback: float | None,
    versions: dict[str, str],
    settings: Mapping[str, Any] | None,
    floor: Mapping[str, Any] | None,
    cpu: dict[str, Any] | None = None,
    database: dict[str, float] | None = None,
    messages: dict[str, float] | None = None,
    preloaded: dict[str, Any] | None = None,
) -> BenchResult:
    """The run's figures, from what it counted and what was measured beside it."""
    completed, failed = tally.count("COMPLETED"), tally.count("FAILED")
    errors = len(kinds) - completed - failed
    expected = {"ok": "COMPLETED"}
    unexpected = sum(
        n
        for kind, counts in tally.outcomes.items()
        for outcome, n in counts.items()
        if outcome in TERMINAL and outcome != expected.get(kind, "FAILED")
    )
    latency = percentiles(tally.latencies)
    multiple = None
    if floor is not None and latency:
        floor_p50 = floor_ms(floor, pattern)
        if floor_p50:
            multiple = round(latency["p50"] / floor_p50, 2)
    return BenchResult(
        pattern=pattern,
        sagas=len(kinds),
        concurrency=concurrency,
        wall_seconds=round(wall, 3),
        completed=completed,
        failed=failed,
        errors=errors,
        sagas_per_second=round(completed / wall, 1) if wall else 0.0,
        latency_ms=latency,
        start_response_ms=percentiles(tally.starts),
        machine=where.machine(),
        rate=rate,
        mix=mix,
        terminal_per_second=round((completed + failed) / wall, 1) if wall else 0.0,
        error_rate=round(errors / len(kinds), 4) if kinds else 0.0,
        unexpected=unexpected,
        http_errors=tally.http_errors,
        rest_ms=percentiles(tally.starts + tally.reads),
        status_read_ms=percentiles(tally.reads),
        long_poll_ms=percentiles(tally.polls),
        latency_quantiles=quantiles(tally.latencies),
        latency_by_kind={k: percentiles(v) for k, v in sorted(tally.by_kind.items())},
        outcomes_by_kind={k: dict(v) for k, v in sorted(tally.outcomes.items())},
        rollback_success=rollback,
        check=verdict,
        versions=versions,
        settings={
            "pattern": pattern,
            "sagas": len(kinds),
            "concurrency": None if rate else concurrency,
            "rate": rate,
            "mix": mix,
            **(settings or {}),
        },
        timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
        floor=dict(floor) if floor is not None else None,
        latency_vs_floor=multiple,
        cpu=cpu,
        database=database,
        messages=messages,
        preload=preloaded,
    )
