"""The orchestrator's process: the order saga on the durable engine, behind ``/saga``, and
the operator console at ``/ui`` (:mod:`services.orchestrator.console`).

Run it with ``cloudmart serve orchestrator``. At start-up it resumes every unfinished saga
from its history (and keeps claiming sagas whose owner died); commands go to the services
over RabbitMQ, or, embedded or co-located, straight to the business operations in this process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from prometheus_client.core import Metric

from activities.db import Database
from engine import Engine
from engine.adapters.rabbitmq import RabbitMQTransport
from engine.observer import SagaObserver
from engine.ports import Transport
from orchestration_pattern.metrics import PrometheusSagaObserver, sagas_needing_operator
from orchestration_pattern.orchestrator import (
    Orchestrator,
    build_engine,
    in_process_transport,
    workflows_of,
)
from services._kit import Settings, create_app, failpoints, get_settings
from services._kit.app import LATENCY_BUCKETS
from services._kit.console import static_router
from services._kit.metrics import gauge
from services.orchestrator import console
from services.orchestrator.api import router


def engine_for(
    settings: Settings, db: Database, transport: Transport, *, observer: SagaObserver | None = None
) -> Engine:
    """The engine of an orchestrator process configured by ``settings``: the workflows of the
    module ``settings.workflows`` names, and the failure point of the test profile, when one is
    armed."""
    return build_engine(
        db,
        transport,
        lease_seconds=settings.lease_seconds,
        compensation_alert_attempts=settings.compensation_alert_attempts,
        step_timeout=settings.request_timeout,
        saga_deadline=settings.saga_deadline,
        step_retry=settings.step_retry,
        compensation_retry=settings.compensation_retry,
        max_running=settings.max_running_sagas,
        max_queued=settings.max_queued_sagas,
        observer=observer,
        history_hook=failpoints.history_hook(),
        workflows=workflows_of(settings.workflows),
    )


def build_app(settings: Settings | None = None, *, database: Database | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def run_engine(app: FastAPI) -> AsyncIterator[None]:
        db: Database = app.state.db
        async with AsyncExitStack() as stack:
            transport: Transport
            if settings.in_process or not settings.rabbitmq_url:
                transport = in_process_transport(db, served_countries=settings.served_countries)
            else:
                rabbit = RabbitMQTransport(
                    settings.rabbitmq_url,
                    namespace=settings.namespace,
                    max_batch=settings.command_batch_max,
                )
                await stack.enter_async_context(rabbit)
                transport = rabbit

                async def broker_up() -> bool:
                    return rabbit.connected

                app.state.health_checks["rabbitmq"] = broker_up

                async def messages() -> list[Metric]:
                    stats = rabbit.stats
                    return [
                        gauge(
                            "cloudmart_transport_messages",
                            "Commands sent and replies received, and the RabbitMQ messages "
                            "that carried them (a batch is one), since the process started.",
                            {
                                "commands": stats.requests,
                                "command_messages": stats.messages_sent,
                                "replies": stats.replies,
                                "reply_messages": stats.reply_messages,
                            },
                            "kind",
                        )
                    ]

                app.state.telemetry.add_probe("transport", messages)
            observer = PrometheusSagaObserver(app.state.metrics, buckets=LATENCY_BUCKETS)
            engine = engine_for(settings, db, transport, observer=observer)
            observer.track_running(lambda: engine.running, lambda: engine.waiting)

            async def operator_flags() -> list[Metric]:
                return await sagas_needing_operator(engine.store)

            app.state.telemetry.add_probe("sagas", operator_flags)
            app.state.orchestrator = Orchestrator(
                engine, db, workflows=workflows_of(settings.workflows)
            )
            await engine.recover()
            await stack.enter_async_context(engine)  # background loop: leases, claims
            yield

    return create_app(
        "orchestrator",
        settings,
        router,
        console.router,
        static_router,
        database=database,
        lifespan=run_engine,
        description="Starts, follows and cancels order sagas run on the durable workflow engine.",
    )


def app() -> FastAPI:
    """The factory for ``uvicorn --factory``: settings from the environment, read now."""
    return build_app()
