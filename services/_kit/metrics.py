"""What every CloudMart process exports on ``GET /metrics`` besides its HTTP latencies.

:class:`Telemetry` is built by the app factory on the app's own registry
(``app.state.telemetry``), so each process's ``/metrics`` shows its own numbers:

- ``cloudmart_commands_total{method,outcome}``: RabbitMQ commands this process answered
  (``ok``, ``refused`` = a business error reply, ``unavailable`` = an attempt that met a
  database, broker or network fault and runs again once it heals, ``failed`` = a delivery that
  failed otherwise and goes round again or to the dead-letter queue);
  :meth:`Telemetry.count_commands` wraps the command handler.
- ``cloudmart_inbox_duplicates_total{operation}``: repeats of an operation answered from the
  inbox instead of running again (read from :attr:`activities.db.Database.inbox_repeats`).
- ``cloudmart_infrastructure_waiting{dependency}``: messages (commands, events) held unacked
  by this process until the database, broker or network they failed on is back;
  ``cloudmart_infrastructure_retries_total{dependency}``: attempts made again after such a
  fault; ``cloudmart_dependency_down{dependency}`` (1 while down) and
  ``cloudmart_dependency_outages_total{dependency}``, from :class:`activities.faults.Outages`.
- *Probes*: gauges read from outside the process when ``/metrics`` is scraped — dead-letter
  depths from the broker or the stream, the outbox's age, a consumer group's backlog, sagas
  waiting for an operator. A lifespan adds one with :meth:`Telemetry.add_probe`. Each probe
  runs with a short timeout; one that fails or times out reports nothing for that scrape and
  counts ``cloudmart_scrape_errors_total{probe}``, so a broker outage never fails the scrape.
"""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from activities.db import Database
from activities.faults import Outages, dependency_of

log = structlog.get_logger("services.metrics")

Probe = Callable[[], Awaitable[Iterable[Metric]]]
CommandHandler = Callable[[str, dict[str, Any], dict[str, str]], Awaitable[dict[str, Any]]]

PROBE_TIMEOUT = 2.0


def gauge(name: str, documentation: str, values: dict[str, float], label: str) -> Metric:
    """A gauge family with one sample per ``label`` value (a small helper for probes)."""
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class Telemetry:
    """The process-wide metrics of one app (see the module docstring)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        probe_timeout: float = PROBE_TIMEOUT,
        outages: Outages | None = None,
    ):
        self.registry = registry
        self.probe_timeout = probe_timeout
        self.database: Database | None = None
        self.outages = outages or Outages()
        self.commands = Counter(
            "cloudmart_commands",
            "RabbitMQ commands answered by this process, by method and outcome.",
            ["method", "outcome"],
            registry=registry,
        )
        self.scrape_errors = Counter(
            "cloudmart_scrape_errors",
            "Probes that failed or timed out while /metrics was scraped (nothing reported).",
            ["probe"],
            registry=registry,
        )
        self._probes: dict[str, Probe] = {}
        self._latest: dict[str, list[Metric]] = {}
        registry.register(self)

    # -- commands ------------------------------------------------------------------------------

    def count_commands(self, handler: CommandHandler) -> CommandHandler:
        """``handler``, counting each call into ``cloudmart_commands_total``."""

        async def counted(
            method: str, payload: dict[str, Any], headers: dict[str, str]
        ) -> dict[str, Any]:
            try:
                result = await handler(method, payload, headers)
            except Exception as exc:
                if callable(getattr(exc, "to_wire", None)):
                    outcome = "refused"
                elif dependency_of(exc) is not None:
                    outcome = "unavailable"  # waited out, and run again
                else:
                    outcome = "failed"
                self.commands.labels(method=method, outcome=outcome).inc()
                raise
            self.commands.labels(method=method, outcome="ok").inc()
            return result

        return counted

    # -- probes --------------------------------------------------------------------------------

    def add_probe(self, name: str, probe: Probe) -> None:
        """Run ``probe`` on every scrape (replacing a probe of the same name)."""
        self._probes[name] = probe

    def remove_probe(self, name: str) -> None:
        self._probes.pop(name, None)
        self._latest.pop(name, None)

    async def refresh(self) -> None:
        """Run every probe (concurrently, each bounded by ``probe_timeout``)."""
        probes = list(self._probes.items())
        results = await asyncio.gather(*(self._run(name, probe) for name, probe in probes))
        self._latest = {name: metrics for (name, _), metrics in zip(probes, results, strict=True)}

    async def _run(self, name: str, probe: Probe) -> list[Metric]:
        try:
            async with asyncio.timeout(self.probe_timeout):
                return list(await probe())
        except Exception as exc:  # a probe failure must not fail the scrape: counted, logged
            self.scrape_errors.labels(probe=name).inc()
            dependency = dependency_of(exc)
            if dependency is not None:  # logged once per outage, not once per scrape
                self.outages.lost(dependency, exc, where="metrics")
            else:
                log.warning(
                    "metrics.probe_failed",
                    probe=name,
                    error_type=type(exc).__name__,
                    error=str(exc),
                )
            return []

    def _outage_metrics(self) -> Iterable[Metric]:
        outages = self.outages
        known = sorted(set(outages.outages) | set(outages.retries) | set(outages.waiting))
        waiting = GaugeMetricFamily(
            "cloudmart_infrastructure_waiting",
            "Messages held unacknowledged until the dependency they failed on is back.",
            labels=["dependency"],
        )
        retries = CounterMetricFamily(
            "cloudmart_infrastructure_retries",
            "Attempts made again after a database, broker or network fault.",
            labels=["dependency"],
        )
        down = GaugeMetricFamily(
            "cloudmart_dependency_down",
            "1 while this process finds the dependency down, else 0.",
            labels=["dependency"],
        )
        count = CounterMetricFamily(
            "cloudmart_dependency_outages",
            "Outages of the dependency this process saw begin.",
            labels=["dependency"],
        )
        for dependency in known:
            waiting.add_metric([dependency], outages.waiting[dependency])
            retries.add_metric([dependency], outages.retries[dependency])
            down.add_metric([dependency], 1.0 if outages.is_down(dependency) else 0.0)
            count.add_metric([dependency], outages.outages[dependency])
        return [waiting, retries, down, count]

    # -- the collector -------------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        """Inbox repeats, and what the probes read at the last refresh."""
        repeats: Tally[str] = self.database.inbox_repeats if self.database else Tally()
        duplicates = CounterMetricFamily(
            "cloudmart_inbox_duplicates",
            "Repeated operations answered from the inbox instead of running again.",
            labels=["operation"],
        )
        for operation, count in sorted(repeats.items()):
            duplicates.add_metric([operation], count)
        yield duplicates
        yield from self._outage_metrics()
        for metrics in self._latest.values():
            yield from metrics
