"""What a bench run reports: :class:`BenchResult`, the statistics behind it, and the figures
it is read against (the floor's ceiling, rollback success)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BenchResult:
    """One run. ``latency_ms``: start→terminal of every saga that ended; ``rest_ms``: the
    requests that answer at once (starts and status reads); ``start_response_ms`` and
    ``status_read_ms``: each kind alone; ``long_poll_ms``: the waiting status requests;
    ``cpu``: :func:`cloudmart.costs.per_unit` per ended saga; ``database``: the database's
    counters per ended saga (:data:`cloudmart.costs.DATABASE_COUNTERS`); ``messages``: the
    orchestrator's RabbitMQ commands and replies per ended saga, and the messages that carried
    them (``cloudmart_transport_messages``; absent when it exports none); ``preload``: the
    history written before the run (:meth:`cloudmart.bench.preload.Preloaded.as_dict`)."""

    pattern: str
    sagas: int
    concurrency: int
    wall_seconds: float
    completed: int
    failed: int
    errors: int
    sagas_per_second: float
    latency_ms: dict[str, float]
    start_response_ms: dict[str, float]
    machine: dict[str, Any] = field(default_factory=dict)
    rate: float | None = None
    mix: dict[str, float] = field(default_factory=dict)
    terminal_per_second: float = 0.0
    error_rate: float = 0.0
    unexpected: int = 0
    http_errors: int = 0
    rest_ms: dict[str, float] = field(default_factory=dict)
    latency_quantiles: list[float] = field(default_factory=list)
    latency_by_kind: dict[str, dict[str, float]] = field(default_factory=dict)
    outcomes_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    rollback_success: float | None = None
    check: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    timestamp: str = ""
    floor: dict[str, Any] | None = None
    latency_vs_floor: float | None = None
    status_read_ms: dict[str, float] = field(default_factory=dict)
    long_poll_ms: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, Any] | None = None
    database: dict[str, float] | None = None
    messages: dict[str, float] | None = None
    preload: dict[str, Any] | None = None


def quantile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-quantile (0 < q <= 1) of ``ordered`` (sorted, not empty)."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99, max and mean of ``samples`` in their unit, rounded to 0.01; {} if none."""
    if not samples:
        return {}
    ordered = sorted(samples)
    return {
        "p50": round(quantile(ordered, 0.50), 2),
        "p95": round(quantile(ordered, 0.95), 2),
        "p99": round(quantile(ordered, 0.99), 2),
        "max": round(ordered[-1], 2),
        "mean": round(statistics.fmean(ordered), 2),
        "count": len(ordered),
    }


def quantiles(samples: Sequence[float]) -> list[float]:
    """The 1st..100th percentiles of ``samples`` (a compact CDF); [] if none."""
    if not samples:
        return []
    ordered = sorted(samples)
    return [round(quantile(ordered, q / 100), 3) for q in range(1, 101)]


def rollback_success(failed: int, failed_subjects: Sequence[str]) -> float | None:
    """Share of ``failed`` sagas with no effect left; ``failed_subjects`` are the subjects of
    ``failed`` violations (several may name one saga). None when no saga failed."""
    if failed == 0:
        return None
    broken = len(set(failed_subjects))
    return round((failed - broken) / failed, 4)


def ceiling_per_second(floor: Mapping[str, Any], pattern: str) -> float | None:
    """The most sagas/s of ``pattern`` the primitives allow, from a floor measured under load
    (``cloudmart bench floor`` with ``--load``); None when the floor has no ceiling."""
    saga = floor.get("sagas", {}).get(pattern) or {}
    value = (saga.get("ceiling") or {}).get("per_second")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def floor_ms(floor: Mapping[str, Any], pattern: str) -> float | None:
    """The p50 floor of one saga of ``pattern`` in a ``cloudmart bench floor`` result."""
    saga = floor.get("sagas", {}).get(pattern)
    return None if saga is None else float(saga["p50_ms"])
