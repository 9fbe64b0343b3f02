"""The orchestrator's saga metrics: the engine's observer, in Prometheus terms.

:class:`PrometheusSagaObserver` is the :class:`~engine.observer.SagaObserver` the orchestrator
process gives its engine; every metric lives on the app's own registry. Labels stay
low-cardinality: workflow, step ("service.method"), status and outcome names, never an order id.

=================================================================  ===========================
metric                                                             source
=================================================================  ===========================
``cloudmart_saga_started_total{workflow}``                         the engine started a saga
``cloudmart_saga_resumed_total{workflow}``                         resumed from history
``cloudmart_saga_finished_total{workflow,status,failed_step}``     COMPLETED, FAILED, PARKED
``cloudmart_step_duration_seconds{step}``                          each attempt's round trip
``cloudmart_step_attempts_total{step,outcome}``                    each attempt's outcome
``cloudmart_compensations_total{step,outcome}``                    each compensation attempt
``cloudmart_operator_alerts_total{workflow}``                      a saga flagged for an operator
``cloudmart_sagas_running``                                        sagas this process drives
``cloudmart_sagas_waiting``                                        started here, waiting for a slot
``cloudmart_sagas_needing_operator``                               read from the database on scrape
=================================================================  ===========================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from engine.ports import HistoryStore

__all__ = ["PrometheusSagaObserver", "sagas_needing_operator"]


class PrometheusSagaObserver:
    """Counts the engine's saga and step events into ``registry`` (cheap: no I/O).

    ``buckets`` are the step-duration histogram's, in seconds (the process's HTTP latency
    buckets, so both read alike).
    """

    def __init__(self, registry: CollectorRegistry, *, buckets: Sequence[float]) -> None:
        self.started = Counter(
            "cloudmart_saga_started",
            "Sagas started, by workflow.",
            ["workflow"],
            registry=registry,
        )
        self.resumed = Counter(
            "cloudmart_saga_resumed",
            "Unfinished sagas this process claimed from history (recovery or takeover).",
            ["workflow"],
            registry=registry,
        )
        self.finished = Counter(
            "cloudmart_saga_finished",
            "Sagas finished, by status and the step whose failure made them compensate.",
            ["workflow", "status", "failed_step"],
            registry=registry,
        )
        self.step_duration = Histogram(
            "cloudmart_step_duration_seconds",
            "Round trip of one attempt of a saga step (command sent to reply received).",
            ["step"],
            buckets=buckets,
            registry=registry,
        )
        self.step_attempts = Counter(
            "cloudmart_step_attempts",
            "Attempts of saga steps by outcome: completed, refused, timed_out, transport_error.",
            ["step", "outcome"],
            registry=registry,
        )
        self.compensations = Counter(
            "cloudmart_compensations",
            "Compensation attempts by outcome: completed, already_compensated, failed.",
            ["step", "outcome"],
            registry=registry,
        )
        self.operator_alerts = Counter(
            "cloudmart_operator_alerts",
            "Sagas flagged for an operator because a compensation, or a step past the pivot, "
            "kept failing.",
            ["workflow"],
            registry=registry,
        )
        self.running = Gauge(
            "cloudmart_sagas_running", "Sagas this process is driving now.", registry=registry
        )
        self.waiting = Gauge(
            "cloudmart_sagas_waiting",
            "Sagas started here that wait for a slot (CLOUDMART_MAX_RUNNING_SAGAS).",
            registry=registry,
        )

    def track_running(self, running: Callable[[], int], waiting: Callable[[], int]) -> None:
        """Read ``cloudmart_sagas_running`` from ``running()`` and ``cloudmart_sagas_waiting``
        from ``waiting()`` at each scrape."""
        self.running.set_function(lambda: float(running()))
        self.waiting.set_function(lambda: float(waiting()))

    def saga_started(self, workflow: str) -> None:
        self.started.labels(workflow=workflow).inc()

    def saga_resumed(self, workflow: str) -> None:
        self.resumed.labels(workflow=workflow).inc()

    def saga_finished(self, workflow: str, status: str, failed_step: str) -> None:
        self.finished.labels(workflow=workflow, status=status, failed_step=failed_step).inc()

    def step_attempted(self, step: str, outcome: str, seconds: float) -> None:
        self.step_attempts.labels(step=step, outcome=outcome).inc()
        self.step_duration.labels(step=step).observe(seconds)

    def compensation_attempted(self, step: str, outcome: str) -> None:
        self.compensations.labels(step=step, outcome=outcome).inc()

    def operator_flagged(self, workflow: str) -> None:
        self.operator_alerts.labels(workflow=workflow).inc()


async def sagas_needing_operator(store: HistoryStore) -> list[Metric]:
    """``cloudmart_sagas_needing_operator``: sagas flagged in the history store (every
    orchestrator on the database reports the same number; it is a fact of the database)."""
    count = await store.count_needing_operator()
    family = GaugeMetricFamily(
        "cloudmart_sagas_needing_operator",
        "Sagas flagged for an operator (parked, or a compensation or a step past the pivot "
        "keeps failing).",
    )
    family.add_metric([], float(count))
    return [family]
