"""The inventory service's process.

Run it with ``cloudmart serve inventory`` or ``uvicorn --factory services.inventory.main:app``.
In the orchestration pattern on real infrastructure it also consumes its RabbitMQ command queue.
"""

from __future__ import annotations

from fastapi import FastAPI

from activities.db import Database
from services._kit import Settings, create_app, get_settings
from services._kit.events import service_lifespan
from services.inventory.api import router


def build_app(settings: Settings | None = None, *, database: Database | None = None) -> FastAPI:
    return create_app(
        "inventory",
        settings or get_settings(),
        router,
        database=database,
        lifespan=service_lifespan("inventory"),
    )


def app() -> FastAPI:
    """The factory for ``uvicorn --factory``: settings from the environment, read now."""
    return build_app()
