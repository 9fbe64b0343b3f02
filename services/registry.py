"""The HTTP services by name, for the command line (``cloudmart serve NAME``) and ``up``.

Each name maps to the module whose ``build_app(settings, *, database=None)`` builds it; the
module is imported only when that service is built, so serving ``inventory`` does not load
the orchestrator's engine and broker code.
"""

from __future__ import annotations

import importlib

from fastapi import FastAPI

from activities.db import Database
from services._kit import Settings

SERVICES: dict[str, str] = {
    "order": "services.order.main",
    "inventory": "services.inventory.main",
    "payment": "services.payment.main",
    "shipping": "services.shipping.main",
    "orchestrator": "services.orchestrator.main",
}


def build_service_app(
    name: str, settings: Settings, *, database: Database | None = None
) -> FastAPI:
    """Service ``name``'s app; ``database`` lets embedded mode share one across services.

    Raises ValueError for an unknown name.
    """
    try:
        module = SERVICES[name]
    except KeyError:
        known = ", ".join(SERVICES)
        raise ValueError(f"unknown service {name!r}; known: {known}") from None
    app: FastAPI = importlib.import_module(module).build_app(settings, database=database)
    return app
