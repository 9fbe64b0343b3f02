"""What every CloudMart HTTP service is built from: one app factory and its dependencies.

A service's ``main.py`` is a few lines::

    from services._kit import Settings, create_app, get_settings
    from services.inventory.api import router

    def build_app(settings: Settings | None = None) -> FastAPI:
        return create_app("inventory", settings or get_settings(), router)

Routes get the database with ``db: DatabaseDep`` (or ``Depends(db_of)``), raise the
activities' ``DomainError``\\ s, and declare them with ``responses=error_responses(...)``.
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
from services._kit.params import BookIdPath, OrderIdPath
from services._kit.settings import SERVICE_PORTS, Settings, get_settings

__all__ = [
    "SERVICE_PORTS",
    "BookIdPath",
    "ConfigurationError",
    "DatabaseDep",
    "ErrorBody",
    "OrderIdPath",
    "Settings",
    "SettingsDep",
    "configure_logging",
    "create_app",
    "db_of",
    "error_responses",
    "get_settings",
    "settings_of",
]
