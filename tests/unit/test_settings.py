"""Settings come from the environment and profile files, nowhere else."""

from __future__ import annotations

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
