"""What every CloudMart HTTP service is built from: one app factory and its dependencies.

A domain service is its router, ``services.<name>.api.router``: :mod:`services.registry`
builds its app with ``create_app(name, settings, router, lifespan=service_lifespan(name))``,
and the service's name, port and patterns come from :mod:`services._kit.roster`.

Routes get the database with ``db: DatabaseDep`` (or ``Depends(db_of)``), raise the
activities' ``DomainError``\\ s, and declare them with ``responses=error_responses(...)``; a
route that brings stock or money in once per ``Idempotency-Key`` spreads
``**ledger_operation(...)`` into its decorator instead.
"""

from __future__ import annotations

from services._kit.app import (
    ConfigurationError,
    DatabaseDep,
    SettingsDep,
    create_app,
    db_of,
    settings_of,
)
from services._kit.errors import ErrorBody, error_responses
from services._kit.logging import configure_logging
from services._kit.params import BookIdPath, IdempotencyKeyHeader, OrderIdPath, ledger_operation
from services._kit.roster import SERVICE_PORTS
from services._kit.settings import Settings, get_settings

__all__ = [
    "SERVICE_PORTS",
    "BookIdPath",
    "ConfigurationError",
    "DatabaseDep",
    "ErrorBody",
    "IdempotencyKeyHeader",
    "OrderIdPath",
    "Settings",
    "SettingsDep",
    "configure_logging",
    "create_app",
    "db_of",
    "error_responses",
    "get_settings",
    "ledger_operation",
    "settings_of",
]
