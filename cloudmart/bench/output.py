"""A run's result as text and as JSON, and which processes a run watches."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

from cloudmart import costs
from cloudmart.bench.figures import BenchResult, ceiling_per_second, floor_ms
from services._kit.roster import ports_from, spec_of


def report(result: BenchResult) -> str:
    """The run in a few lines of text."""
    lat, start, rest = result.latency_ms, result.start_response_ms, result.rest_ms
    read, poll = result.status_read_ms, result.long_poll_ms
    load = (
        f"at {result.rate} sagas/s (open loop)"
        if result.rate
        else (f"at concurrency {result.concurrency}")
    )
    mix = ", ".join(f"{k} {v:g}" for k, v in result.mix.items()) or "none"
    lines = [
        f"{result.pattern}: {result.sagas} sagas {load} in {result.wall_seconds}s, "
        f"failure mix {mix}",
        f"  completed {result.completed}, failed {result.failed}, errors {result.errors} "
        f"(error rate {result.error_rate:.2%}), unexpected outcomes {result.unexpected}",
        f"  {result.sagas_per_second} completed sagas/s, "
        f"{result.terminal_per_second} ended sagas/s",
        f"  start→terminal ms: p50 {lat.get('p50')} p95 {lat.get('p95')} "
        f"p99 {lat.get('p99')} max {lat.get('max')}",
        f"  REST ms ({rest.get('count', 0)} requests answered at once): p50 {rest.get('p50')} "
        f"p99 {rest.get('p99')}; starts p50 {start.get('p50')} p99 {start.get('p99')}, "
        f"status reads p50 {read.get('p50')} p99 {read.get('p99')}",
        f"  long-polls ({poll.get('count', 0)}, waiting for the saga): p50 {poll.get('p50')} "
        f"p99 {poll.get('p99')}",
    ]
    if result.cpu is not None and result.cpu["ms"]:
        each = ", ".join(
            f"{name} {ms:g}" for name, ms in sorted(result.cpu["ms"].items(), key=lambda i: -i[1])
        )
        busy = result.cpu["busy"]
        shown = f"; machine busy {busy:.0%}" if busy is not None else ""
        lines.append(f"  CPU ms per saga: {result.cpu['total_ms']:g} ({each}){shown}")
    if result.messages:
        lines.append(
            "  RabbitMQ per saga: "
            + ", ".join(f"{name} {n:g}" for name, n in result.messages.items())
        )
    if result.database is not None:
        lines.append(
            "  database per saga: "
            + ", ".join(f"{name} {n:g}" for name, n in result.database.items())
        )
    if result.latency_vs_floor is not None and result.floor is not None:
        lines.append(
            f"  p50 is {result.latency_vs_floor}× the floor of "
            f"{floor_ms(result.floor, result.pattern)} ms"
        )
    ceiling = ceiling_per_second(result.floor, result.pattern) if result.floor else None
    if ceiling and result.completed:
        lines.append(
            f"  {result.sagas_per_second} sagas/s is {result.sagas_per_second / ceiling:.0%} "
            f"of the floor's ceiling of {ceiling} sagas/s"
        )
    if result.preload is not None:
        lines.append(f"  {preloaded_line(result.preload)}")
    if result.check is not None:
        verdict = "ok" if result.check["ok"] else "VIOLATED"
        rollback = (
            "no saga failed"
            if result.rollback_success is None
            else f"{result.rollback_success:.2%} of FAILED sagas fully compensated"
        )
        lines.append(
            f"  invariants: {verdict} ({result.check['violations']} violations); "
            f"rollback: {rollback}"
        )
        lines += [f"    {shown}" for shown in result.check["shown"][:5]]
    return "\n".join(lines)


def preloaded_line(preload: Mapping[str, Any]) -> str:
    """What a preload wrote, and how long it took."""
    return (
        f"preloaded {preload['sagas']} finished sagas first in {preload['seconds']}s "
        f"(templates {preload['templates_seconds']}s, bulk copy {preload['copy_seconds']}s: "
        f"{preload['copied_per_second']} sagas/s)"
    )


def to_json(result: BenchResult) -> str:
    return json.dumps(asdict(result), indent=2)


def watched(
    url: str,
    pattern: str,
    services: Sequence[str],
    ports: Mapping[str, int],
    settings: Any,
    *,
    colocated: bool = False,
) -> dict[str, int | None]:
    """``{name: port}`` of what to measure the CPU of: the ``services`` on ``ports`` when ``url``
    is on this machine (``colocated``: their one process, as ``cloudmart``), and the servers the
    pattern uses (its database, and RabbitMQ or Redis, unless co-located) when their URLs (in
    ``settings``) are."""
    here = costs.local_port(url, 80) is not None
    watch: dict[str, int | None] = {}
    if here:
        watch = {"cloudmart": ports[services[0]]} if colocated else {n: ports[n] for n in services}
    watch["mariadb"] = costs.local_port(settings.effective_database_url, 3306)
    if colocated:
        return watch
    if pattern == "orchestration":
        watch["rabbitmq"] = costs.local_port(settings.rabbitmq_url, 5672)
    else:
        watch["redis"] = costs.local_port(settings.redis_url, 6379)
    return watch


def ports_beside(url: str, entry: str) -> dict[str, int]:
    """Each service's port if ``url`` (the ``entry`` service's) follows the ``--base-port``
    layout: orchestrator on base + 5, order on base + 1..."""
    port = urlsplit(url).port or (443 if url.startswith("https") else 80)
    return ports_from(port - spec_of(entry).offset)
