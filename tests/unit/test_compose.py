"""The container deployment, checked statically: the Dockerfile and both Compose files.

No Docker engine is needed. The files are read with PyYAML and checked against the code they
deploy (the settings' field names, the service ports, ``init.sql``); where ``docker compose`` or
``docker-compose`` is installed, its ``config -q`` must accept each file too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services._kit.roster import SERVICE_PORTS
from services._kit.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILES = {
    "orchestration": ROOT / "orchestration_pattern" / "docker-compose.yml",
    "choreography": ROOT / "choreography_pattern" / "docker-compose.yml",
}
APP_SERVICES = {
    "orchestration": ["order", "inventory", "payment", "shipping", "orchestrator"],
    "choreography": ["order", "inventory", "payment", "shipping"],
}
BROKER = {"orchestration": "rabbitmq", "choreography": "redis"}
INIT_SQL_TARGET = "/docker-entrypoint-initdb.d/init.sql"
VALID_ENV_NAMES = frozenset(f"CLOUDMART_{name.upper()}" for name in Settings.model_fields)

patterns = pytest.mark.parametrize("pattern", sorted(COMPOSE_FILES))


def load(pattern: str) -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE_FILES[pattern].read_text())
    assert isinstance(compose, dict) and isinstance(compose.get("services"), dict)
    return compose


def services(pattern: str) -> dict[str, dict[str, Any]]:
    return load(pattern)["services"]  # type: ignore[no-any-return]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def with_defaults(text: str) -> str:
    """Compose interpolation with every variable unset: ``${VAR:-default}`` → ``default``."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", text)


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """Container port → host port, from short (``[ip:]host:container``) or long syntax."""
    mapping: dict[int, int] = {}
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            mapping[int(entry["target"])] = int(entry["published"])
            continue
        # An unquoted 8001:8001 is a YAML 1.1 base-60 integer, not a mapping: keep them quoted.
        assert isinstance(entry, str), f"quote the port mapping {entry!r}"
        *_, host, container = with_defaults(entry).split(":")
        mapping[int(container.split("/")[0])] = int(host)
    return mapping


def volume_sources(service: dict[str, Any]) -> dict[str, str]:
    """Container path → host path or volume name, from short or long syntax."""
    mounts: dict[str, str] = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            mounts[entry["target"]] = entry["source"]
        else:
            source, target, *_ = entry.split(":")
            mounts[target] = source
    return mounts


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


@patterns
def test_expected_services_exist(pattern: str) -> None:
    expected = {"mysql", BROKER[pattern], "db-seed", *APP_SERVICES[pattern]}
    assert set(services(pattern)) == expected


def test_choreography_has_no_orchestrator_nor_rabbitmq() -> None:
    found = services("choreography")
    assert "orchestrator" not in found and "rabbitmq" not in found
    assert not any("CLOUDMART_RABBITMQ_URL" in environment(s) for s in found.values())


@patterns
def test_service_ports_map_to_themselves(pattern: str) -> None:
    found = services(pattern)
    for name in APP_SERVICES[pattern]:
        port = SERVICE_PORTS[name]
        assert published_ports(found[name]) == {port: port}, name
    all_host_ports = [p for s in found.values() for p in published_ports(s).values()]
    assert len(all_host_ports) == len(set(all_host_ports)), "a host port is published twice"
    if pattern == "choreography":
        assert 8005 not in all_host_ports


@patterns
def test_every_cloudmart_variable_is_a_setting(pattern: str) -> None:
    text = COMPOSE_FILES[pattern].read_text()
    used = set(re.findall(r"\bCLOUDMART_[A-Z0-9_]+\b", text))
    for service in services(pattern).values():
        used |= {name for name in environment(service) if name.startswith("CLOUDMART_")}
    assert used, "no CLOUDMART_* variable found"
    assert used <= VALID_ENV_NAMES, f"not fields of Settings: {sorted(used - VALID_ENV_NAMES)}"


@patterns
def test_service_environment_makes_valid_settings(
    pattern: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [*APP_SERVICES[pattern], "db-seed"]:
        with monkeypatch.context() as env:
            for variable in [v for v in os.environ if v.startswith("CLOUDMART_")]:
                env.delenv(variable)
            for variable, value in environment(services(pattern)[name]).items():
                env.setenv(variable, with_defaults(value))
            settings = Settings(_env_file=None)
        assert settings.pattern == pattern and not settings.embedded, name
        assert settings.api_key is None or not settings.api_key.get_secret_value(), name


@patterns
def test_app_services_run_their_pattern_against_the_containers(pattern: str) -> None:
    found = services(pattern)
    for name in [*APP_SERVICES[pattern], "db-seed"]:
        env = environment(found[name])
        assert env["CLOUDMART_PATTERN"] == pattern, name
        assert env["CLOUDMART_DATABASE_URL"].startswith("mysql+aiomysql://"), name
        assert "@mysql:3306/cloudmart" in env["CLOUDMART_DATABASE_URL"], name
        assert env["CLOUDMART_HOST"] == "0.0.0.0", name
        broker_url = (
            "CLOUDMART_RABBITMQ_URL" if pattern == "orchestration" else "CLOUDMART_REDIS_URL"
        )
        assert (
            f"@{BROKER[pattern]}:" in env[broker_url] or f"//{BROKER[pattern]}:" in env[broker_url]
        )
    for name in APP_SERVICES[pattern]:
        assert found[name]["command"] == ["serve", name]
        assert found[name]["restart"] == "unless-stopped"
    assert found["db-seed"]["command"] == ["db", "init", "--seed"]
    assert found["db-seed"].get("restart", "no") == "no"


@patterns
def test_connection_pools_stay_well_under_the_mysql_limit(pattern: str) -> None:
    found = services(pattern)
    limit = re.search(r"--max[-_]connections[= ](\d+)", command_text(found["mysql"]))
    max_connections = int(limit.group(1)) if limit else 151
    worst = 1  # db-seed: pool_size=1, max_overflow=0
    defaults = Settings.model_fields
    for name in APP_SERVICES[pattern]:
        env = environment(found[name])
        pool = int(env.get("CLOUDMART_DB_POOL_SIZE", defaults["db_pool_size"].default))
        overflow = int(env.get("CLOUDMART_DB_MAX_OVERFLOW", defaults["db_max_overflow"].default))
        worst += pool + overflow
    assert worst <= max_connections // 2, (worst, max_connections)


@patterns
def test_init_sql_mount_is_the_repository_file(pattern: str) -> None:
    mysql = services(pattern)["mysql"]
    assert mysql["image"] == "mysql:8.0"
    source = volume_sources(mysql)[INIT_SQL_TARGET]
    host_path = (COMPOSE_FILES[pattern].parent / source).resolve()
    assert host_path == ROOT / "init.sql" and host_path.is_file()
    assert environment(mysql)["MYSQL_DATABASE"] == "cloudmart"


@patterns
def test_build_context_holds_the_dockerfile(pattern: str) -> None:
    built = {name: s["build"] for name, s in services(pattern).items() if "build" in s}
    assert set(built) == {*APP_SERVICES[pattern], "db-seed"}
    for name, build in built.items():
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        context_dir = (COMPOSE_FILES[pattern].parent / context).resolve()
        assert context_dir == ROOT and context_dir.is_dir(), name
        assert (context_dir / dockerfile).resolve() == DOCKERFILE and DOCKERFILE.is_file(), name


@patterns
def test_app_services_have_healthchecks_and_wait_for_the_infrastructure(pattern: str) -> None:
    found = services(pattern)
    for name in APP_SERVICES[pattern]:
        test = found[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        assert f"http://127.0.0.1:{SERVICE_PORTS[name]}/health" in test[3], name
        compile(test[3], f"<{name} healthcheck>", "exec")
        deps = depends_on(found[name])
        assert deps["mysql"] == "service_healthy", name
        assert deps[BROKER[pattern]] == "service_healthy", name
        assert deps["db-seed"] == "service_completed_successfully", name
    assert depends_on(found["db-seed"]) == {"mysql": "service_healthy"}
    for name in ("mysql", BROKER[pattern]):
        assert found[name]["healthcheck"]["test"], name
    assert "mysqladmin ping" in " ".join(found["mysql"]["healthcheck"]["test"])


def test_rabbitmq_image_and_healthcheck() -> None:
    rabbitmq = services("orchestration")["rabbitmq"]
    assert rabbitmq["image"] == "rabbitmq:3.13-management"
    assert rabbitmq["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]


def test_redis_keeps_an_append_only_file_in_a_volume() -> None:
    compose = load("choreography")
    redis = compose["services"]["redis"]
    assert redis["image"] == "redis:7"
    assert "--appendonly yes" in command_text(redis)
    assert volume_sources(redis)["/data"] in compose["volumes"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_dockerfile_builds_one_non_root_image_for_every_process() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert "pip install --no-cache-dir ." in text
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r'^ENTRYPOINT \["cloudmart"\]', text, re.MULTILINE)
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()
    }
    assert {".env", ".git", ".venv"} <= ignored
    assert not ignored & {"pyproject.toml", "README.md", "*.md", "*.toml"}, (
        "pip install . needs them"
    )


def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@patterns
def test_docker_compose_config_accepts_the_file(pattern: str) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` (plugin) nor `docker-compose` is installed")
    result = subprocess.run(
        [*command, "-f", str(COMPOSE_FILES[pattern]), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
