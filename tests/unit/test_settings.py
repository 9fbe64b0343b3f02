"""Settings come from the environment and profile files, nowhere else."""

from __future__ import annotations

from pathlib import Path

import pytest

from services._kit.settings import Settings, get_settings


def test_defaults_are_embedded_dev() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.env == "dev" and settings.embedded
    assert settings.effective_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.served_countries == ("JP",)
    assert not settings.json_logs


def test_environment_and_profile_file(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("CLOUDMART_NAMESPACE=base\nCLOUDMART_LOG_LEVEL=DEBUG\n")
    (tmp_path / ".env.prod").write_text("CLOUDMART_NAMESPACE=prodns\n")
    monkeypatch.setenv("CLOUDMART_ENV", "prod")
    monkeypatch.setenv("CLOUDMART_SERVED_COUNTRIES", "jp, us")
    monkeypatch.setenv("CLOUDMART_DATABASE_URL", "mysql+aiomysql://root@127.0.0.1:3306/x")
    settings = get_settings()
    assert settings.env == "prod" and settings.json_logs
    assert settings.namespace == "prodns" and settings.log_level == "DEBUG"
    assert settings.served_countries == ("JP", "US")
    assert not settings.embedded


def test_bad_namespace_is_refused() -> None:
    with pytest.raises(ValueError, match="namespace"):
        Settings(_env_file=None, namespace="has spaces")  # type: ignore[call-arg]


def test_retry_policies_default_to_todays_values_and_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engine import RetryPolicy

    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert defaults.step_retry == RetryPolicy(
        initial_interval=0.2, backoff=2.0, max_interval=5.0, max_attempts=5
    )
    assert defaults.compensation_retry == RetryPolicy(
        initial_interval=0.5, backoff=2.0, max_interval=30.0, max_attempts=None
    )
    monkeypatch.setenv("CLOUDMART_STEP_RETRY_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("CLOUDMART_COMPENSATION_RETRY_MAX_INTERVAL", "60")
    monkeypatch.setenv("CLOUDMART_COMPENSATION_ALERT_ATTEMPTS", "3")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.step_retry.max_attempts == 7
    assert settings.compensation_retry.max_interval == 60.0
    assert settings.compensation_alert_attempts == 3


async def test_the_orchestrators_engine_retries_as_the_settings_say(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from activities.db import Database
    from engine.adapters import InMemoryTransport
    from services.orchestrator.main import engine_for

    monkeypatch.setenv("CLOUDMART_STEP_RETRY_INITIAL", "1.5")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    db = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}")
    engine = engine_for(settings, db, InMemoryTransport({}))
    try:
        assert engine.worker.config.step_retry.initial_interval == 1.5
        assert engine.worker.config.compensation_retry == settings.compensation_retry
    finally:
        await db.dispose()


async def test_the_orchestrator_registers_the_workflows_of_the_module_the_settings_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import order_saga_v1

    from activities.db import Database
    from engine.adapters import InMemoryTransport
    from orchestration_pattern.orchestrator import WORKFLOWS, workflows_of
    from services.orchestrator.main import engine_for

    assert workflows_of(Settings(_env_file=None).workflows) == WORKFLOWS  # type: ignore[call-arg]
    monkeypatch.setenv("CLOUDMART_WORKFLOWS", "order_saga_v1")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    db = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}")
    engine = engine_for(settings, db, InMemoryTransport({}))
    try:
        registered = engine.worker._workflows  # what recovery and claims look up by name
        assert registered["place_order"] is order_saga_v1.place_order
        assert set(registered) == {"place_order", "place_order_declarative"}
    finally:
        await db.dispose()


def test_a_workflows_module_must_exist_and_hold_a_workflows_tuple() -> None:
    from orchestration_pattern.orchestrator import workflows_of

    with pytest.raises(ValueError, match="cannot import the workflows module 'no_such_module'"):
        workflows_of("no_such_module")
    with pytest.raises(ValueError, match="module 'json' has no WORKFLOWS tuple"):
        workflows_of("json")
    with pytest.raises(ValueError):
        Settings(_env_file=None, workflows="not a module; rm -rf")  # type: ignore[call-arg]


def test_an_orchestrator_needs_the_order_saga_among_its_workflows() -> None:
    from orchestration_pattern.orchestrator import Orchestrator
    from workflows.restock import restock

    with pytest.raises(ValueError, match=r"no place_order among the workflows \['restock'\]"):
        Orchestrator(None, None, workflows=[restock])  # type: ignore[arg-type]
