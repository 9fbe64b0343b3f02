"""The kit's public surface is pinned: adding a name is a decision, not an accident."""

from __future__ import annotations

import importlib

import pytest

import services._kit
from services._kit import Settings
from services._kit.roster import DOMAIN_SERVICES
from services.registry import build_service_app


def test_kit_exports_exactly_its_public_names() -> None:
    assert set(services._kit.__all__) == {
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
    }
    assert all(hasattr(services._kit, name) for name in services._kit.__all__)


@pytest.mark.parametrize("service", DOMAIN_SERVICES)
def test_each_domain_service_is_its_router_in_the_kit_app(service: str) -> None:
    router = importlib.import_module(f"services.{service}.api").router
    app = build_service_app(service, Settings(_env_file=None, env="test"))  # type: ignore[call-arg]

    assert app.title == f"CloudMart {service} service"
    paths = set(app.openapi()["paths"])
    assert {route.path for route in router.routes} <= paths
    assert "/health" in paths


def test_an_unknown_service_is_refused_with_the_known_names() -> None:
    with pytest.raises(
        ValueError, match="known: order, inventory, payment, shipping, orchestrator"
    ):
        build_service_app("warehouse", Settings(_env_file=None, env="test"))  # type: ignore[call-arg]
