"""The HTTP services by name, for the command line (``cloudmart serve NAME``) and ``up``.

Which services exist is :mod:`services._kit.roster`'s. A domain service is its router
(``services.<name>.api.router``) in the kit's app, with its consumer: the RabbitMQ command
queue in orchestration, its part of the events in choreography. A service with a ``factory``
(the orchestrator) is built by that module's ``build_app``. Modules are imported only when their
service is built, so serving ``inventory`` does not load the orchestrator's engine and broker
code.
"""

from __future__ import annotations

import importlib

from fastapi import FastAPI

from activities.db import Database
from services._kit import Settings, create_app
from services._kit.console import static_router
from services._kit.events import service_lifespan
from services._kit.roster import CHOREOGRAPHY, spec_of

# The consoles of the domain services, by service and pattern (the orchestrator's is its own).
CONSOLES = {("order", CHOREOGRAPHY): "services.order.console"}


def build_service_app(
    name: str, settings: Settings, *, database: Database | None = None
) -> FastAPI:
    """Service ``name``'s app; ``database`` lets embedded mode share one across services.

    Raises ValueError for an unknown name.
    """
    spec = spec_of(name)
    if spec.factory is not None:
        built: FastAPI = importlib.import_module(spec.factory).build_app(
            settings, database=database
        )
        return built
    api = importlib.import_module(f"services.{name}.api")
    routers = [api.router]
    if (name, settings.pattern) in CONSOLES:
        routers += [importlib.import_module(CONSOLES[name, settings.pattern]).router, static_router]
    return create_app(name, settings, *routers, database=database, lifespan=service_lifespan(name))
