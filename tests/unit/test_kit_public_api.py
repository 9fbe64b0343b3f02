"""The kit's public surface is pinned: adding a name is a decision, not an accident."""

from __future__ import annotations

import importlib

import pytest

import services._kit


def test_kit_exports_exactly_its_public_names() -> None:
    assert set(services._kit.__all__) == {
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
    }
    assert all(hasattr(services._kit, name) for name in services._kit.__all__)


@pytest.mark.parametrize("service", ["order", "inventory", "payment", "shipping"])
def test_each_service_package_exports_its_app_builder(service: str) -> None:
    package = importlib.import_module(f"services.{service}")

    assert package.__all__ == ["build_app"]
    assert callable(package.build_app)
    assert callable(importlib.import_module(f"services.{service}.main").app)
