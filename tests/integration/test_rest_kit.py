"""What every service gets from services._kit, exercised through the real service apps:
/health, /metrics, the prod bearer token, OpenAPI, outages, and the SQLite (embedded) path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from domain_data import clean, order
from fastapi import FastAPI
from rest_support import (
    VALID_ADDRESS,
    assert_error,
    closed_port_url,
    rest_fixtures,
    running,
    settings_for,
)

from activities import Database, create_order
from cloudmart.schema import create_schema
from services._kit import ConfigurationError
from services._kit.roster import SERVICE_NAMES
from services.registry import build_service_app

SEED_PATHS = {
    "order": {"/orders", "/orders/{order_id}", "/orders/{order_id}/cancel"},
    "inventory": {"/inventory/reserve", "/inventory/release", "/inventory/{book_id}"},
    "payment": {
        "/payments/process",
        "/payments/cancel",
        "/payments/refund",
        "/payments/{order_id}",
    },
    "shipping": {"/shipping/arrange", "/shipping/cancel", "/shipping/{order_id}"},
}
# One harmless mutating request per service (valid body, refused or accepted by the rules).
MUTATIONS = {
    "order": (
        "POST",
        "/orders",
        {
            "customer_id": 1,
            "items": [{"book_id": 1, "quantity": 1}],
            "shipping_address": VALID_ADDRESS,
        },
    ),
    "inventory": ("POST", "/inventory/release", {"order_id": "o-1"}),
    "payment": ("POST", "/payments/cancel", {"order_id": "o-1"}),
    "shipping": ("POST", "/shipping/cancel", {"order_id": "o-1"}),
}
API_KEY = "s3cret-key-for-tests"


async def _seed(database: Database) -> None:
    await create_order(database, order("o-1", (1, 1)))


url, db, _client = rest_fixtures("order", seed=_seed, database="cloudmart_test_rest_kit")


def test_the_registry_builds_every_domain_service(url: str) -> None:
    apps = {name: build_service_app(name, settings_for(url)) for name in SEED_PATHS}

    assert set(SEED_PATHS) <= set(SERVICE_NAMES)
    assert all(app.state.service == name for name, app in apps.items())
    with pytest.raises(ValueError, match="unknown service"):
        build_service_app("warehouse", settings_for(url))


@pytest.mark.parametrize("service", sorted(SEED_PATHS))
async def test_openapi_schema_loads_and_lists_the_seed_paths(url: str, service: str) -> None:
    async with running(build_service_app(service, settings_for(url))) as client:
        response = await client.get("/openapi.json")

    assert response.status_code == 200
    schema = response.json()
    assert SEED_PATHS[service] | {"/health", "/metrics"} <= set(schema["paths"])
    assert "ErrorBody" in schema["components"]["schemas"]


async def test_openapi_documents_the_business_refusals_of_a_route(url: str) -> None:
    schema = build_service_app("payment", settings_for(url)).openapi()

    responses = schema["paths"]["/payments/process"]["post"]["responses"]

    assert {"200", "402", "404", "409", "422"} <= set(responses)
    assert "PaymentFailed" in responses["402"]["description"]


@pytest.mark.parametrize("service", sorted(SERVICE_NAMES))
def test_openapi_declares_the_kits_errors_on_every_post(url: str, service: str) -> None:
    schema = build_service_app(service, settings_for(url)).openapi()

    posts = {path: item["post"] for path, item in schema["paths"].items() if "post" in item}
    assert posts
    for path, operation in posts.items():
        for status in ("400", "413", "422", "500", "503"):
            content = operation["responses"][status]["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)


@pytest.mark.parametrize(
    ("service", "method", "path", "allow"),
    [
        ("inventory", "GET", "/inventory/reserve", "POST"),  # not GET /inventory/{book_id}
        ("inventory", "GET", "/inventory/release", "POST"),
        ("inventory", "DELETE", "/inventory/1", "GET"),
        ("payment", "GET", "/payments/process", "POST"),  # not GET /payments/{order_id}
        ("shipping", "GET", "/shipping/arrange", "POST"),
        ("order", "DELETE", "/orders", "POST"),
        ("order", "GET", "/orders/o-1/cancel", "PUT"),
    ],
)
async def test_an_undeclared_method_is_405_with_allow(
    url: str, service: str, method: str, path: str, allow: str
) -> None:
    async with running(build_service_app(service, settings_for(url))) as client:
        response = await client.request(method, path)

    assert assert_error(response, 405)["error"] == "method_not_allowed"
    assert response.headers["allow"] == allow


@pytest.mark.mysql
@pytest.mark.parametrize("service", sorted(SEED_PATHS))
async def test_health_is_200_when_the_database_answers(
    url: str, db: Database, service: str
) -> None:
    async with running(build_service_app(service, settings_for(url))) as client:
        response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok"}}


@pytest.mark.parametrize("service", sorted(SEED_PATHS))
async def test_health_is_503_when_the_database_is_unreachable(service: str) -> None:
    app = build_service_app(service, settings_for(closed_port_url()))
    async with running(app) as client:
        response = await client.get("/health")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "checks": {"database": "down"}}


async def test_a_route_is_503_json_when_the_database_is_unreachable() -> None:
    app = build_service_app("order", settings_for(closed_port_url()))
    async with running(app) as client:
        read = await client.get("/orders/o-1")
        write = await client.request(*MUTATIONS["order"][:2], json=MUTATIONS["order"][2])

    for response in (read, write):
        assert assert_error(response, 503)["error"] == "unavailable"
        assert response.headers["retry-after"] == "1"


async def test_a_failing_extra_health_check_makes_health_503(url: str, db: Database) -> None:
    async def broker_down() -> bool:
        raise ConnectionError("broker gone")

    app = build_service_app("inventory", settings_for(url))
    app.state.health_checks["rabbitmq"] = broker_down
    async with running(app) as client:
        response = await client.get("/health")

    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "rabbitmq": "down"}


@pytest.mark.mysql
async def test_metrics_expose_the_latency_histogram_per_route_template(
    url: str, db: Database
) -> None:
    async with running(build_service_app("order", settings_for(url))) as client:
        await client.get("/orders/o-1")
        await client.get("/orders/unknown-id")
        response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE cloudmart_http_request_duration_seconds histogram" in text
    labels = 'method="GET",route="/orders/{order_id}",service="order"'
    assert f'cloudmart_http_request_duration_seconds_count{{{labels},status="200"}} 1.0' in text
    assert f'cloudmart_http_request_duration_seconds_count{{{labels},status="404"}} 1.0' in text
    assert "cloudmart_http_request_duration_seconds_bucket{" in text


@pytest.mark.mysql
async def test_two_apps_in_one_process_keep_separate_metrics(url: str, db: Database) -> None:
    first = build_service_app("inventory", settings_for(url))
    second = build_service_app("inventory", settings_for(url))
    async with running(first) as one, running(second) as two:
        await one.get("/inventory/1")
        text = (await two.get("/metrics")).text

    assert 'route="/inventory/{book_id}"' not in text


@pytest.mark.mysql
async def test_a_request_id_is_returned_and_a_tame_incoming_one_is_kept(
    url: str, db: Database
) -> None:
    async with running(build_service_app("inventory", settings_for(url))) as client:
        fresh = await client.get("/inventory/1")
        kept = await client.get("/inventory/1", headers={"X-Request-ID": "req-123"})
        replaced = await client.get("/inventory/1", headers={"X-Request-ID": "bad id\x7f"})

    assert len(fresh.headers["x-request-id"]) == 32
    assert kept.headers["x-request-id"] == "req-123"
    assert replaced.headers["x-request-id"] != "bad id\x7f"


# The prod profile ---------------------------------------------------------------------------


def prod_settings(url: str) -> Any:
    return settings_for(url, env="prod", api_key=API_KEY, log_json=False)


@pytest.mark.mysql
@pytest.mark.parametrize("service", sorted(SEED_PATHS))
@pytest.mark.parametrize(
    "authorization",
    [None, "", f"Bearer {API_KEY}x", f"Basic {API_KEY}", API_KEY, "Bearer", "Bearer ключ".encode()],
    ids=["none", "empty", "wrong_key", "wrong_scheme", "no_scheme", "no_token", "non_ascii"],
)
async def test_prod_refuses_a_mutation_without_the_right_bearer_token(
    url: str, db: Database, service: str, authorization: str | bytes | None
) -> None:
    method, path, body = MUTATIONS[service]
    headers = {} if authorization is None else {"Authorization": authorization}
    async with running(build_service_app(service, prod_settings(url))) as client:
        response = await client.request(method, path, json=body, headers=headers)

    assert assert_error(response, 401)["error"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.mysql
@pytest.mark.parametrize("service", sorted(SEED_PATHS))
async def test_prod_accepts_a_mutation_with_the_right_bearer_token(
    url: str, db: Database, service: str
) -> None:
    method, path, body = MUTATIONS[service]
    async with running(build_service_app(service, prod_settings(url))) as client:
        response = await client.request(
            method, path, json=body, headers={"Authorization": f"Bearer {API_KEY}"}
        )

    assert 200 <= response.status_code < 300, response.text


# One read per service that returns what a customer would not want anyone to see.
PERSONAL_READS = {
    "order": "/orders/o-1",
    "inventory": "/inventory/1",
    "payment": "/payments/o-1",
    "shipping": "/shipping/o-1",
}


@pytest.mark.mysql
@pytest.mark.parametrize("service", sorted(SEED_PATHS))
async def test_prod_reads_need_the_token_but_health_metrics_and_docs_stay_open(
    url: str, db: Database, service: str
) -> None:
    assert set(PERSONAL_READS) == set(SEED_PATHS)
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    async with running(build_service_app(service, prod_settings(url))) as client:
        refused = await client.get(PERSONAL_READS[service])
        allowed = await client.get(PERSONAL_READS[service], headers=bearer)
        open_pages = [
            await client.get(p) for p in ("/health", "/metrics", "/openapi.json", "/docs")
        ]

    assert assert_error(refused, 401)["error"] == "unauthorized"
    assert API_KEY not in refused.text
    assert allowed.status_code in (200, 404), allowed.text  # through the guard either way
    assert [r.status_code for r in open_pages] == [200, 200, 200, 200]


def test_prod_refuses_to_build_without_an_api_key(url: str) -> None:
    for api_key in (None, ""):
        with pytest.raises(ConfigurationError, match="CLOUDMART_API_KEY"):
            build_service_app("order", settings_for(url, env="prod", api_key=api_key))


@pytest.mark.parametrize(
    ("broker", "refused"),
    [
        ("amqp://guest:guest@rabbit.internal:5672/", True),
        ("amqp://rabbit.internal:5672/", True),  # no login given: the client sends guest/guest
        ("amqp://guest:guest@127.0.0.1:5672/", False),
        ("amqp://guest:guest@localhost/", False),
        ("amqp://shop:s3cret@rabbit.internal:5672/", False),
    ],
)
def test_prod_refuses_rabbitmqs_default_login_off_loopback(
    url: str, broker: str, refused: bool
) -> None:
    settings = settings_for(url, env="prod", api_key="k", rabbitmq_url=broker)
    if refused:
        with pytest.raises(ConfigurationError, match="guest"):
            build_service_app("order", settings)
    else:
        build_service_app("order", settings)


# Embedded mode: SQLite ----------------------------------------------------------------------


@pytest.fixture
async def sqlite_settings(tmp_path: Path) -> Any:
    settings = settings_for(None, sqlite_path=str(tmp_path / "embedded.db"))
    assert settings.embedded
    database = Database.from_url(settings.effective_database_url)
    await create_schema(database.engine)
    await clean(database)
    await database.dispose()
    return settings


async def test_embedded_sqlite_app_places_and_reads_an_order(sqlite_settings: Any) -> None:
    async with running(build_service_app("order", sqlite_settings)) as client:
        placed = await client.request(*MUTATIONS["order"][:2], json=MUTATIONS["order"][2])
        read = await client.get(placed.headers["location"])
        health = await client.get("/health")

    assert placed.status_code == 201
    assert read.status_code == 200 and read.json()["status"] == "PENDING"
    assert health.status_code == 200


async def test_services_can_share_one_database_and_leave_it_open(sqlite_settings: Any) -> None:
    shared = Database.from_url(sqlite_settings.effective_database_url)
    apps: list[FastAPI] = [
        build_service_app(name, sqlite_settings, database=shared) for name in ("order", "inventory")
    ]
    async with running(apps[0]) as orders, running(apps[1]) as inventory:
        placed = await orders.request(*MUTATIONS["order"][:2], json=MUTATIONS["order"][2])
        order_id = placed.json()["order_id"]
        reserved = await inventory.post(
            "/inventory/reserve",
            json={"order_id": order_id, "items": [{"book_id": 1, "quantity": 1}]},
        )

    assert reserved.status_code == 200
    assert apps[0].state.db is apps[1].state.db is shared
    assert await shared.ping()  # not disposed by the apps
    await shared.dispose()


async def test_an_outage_is_logged_once_however_often_health_and_routes_meet_it() -> None:
    app = build_service_app("order", settings_for(closed_port_url()))
    with structlog.testing.capture_logs() as logs:
        async with running(app) as client:
            for _ in range(20):
                assert (await client.get("/health")).status_code == 503
                assert (await client.get("/orders/o-1")).status_code == 503
            metrics = (await client.get("/metrics")).text

    said = [entry["event"] for entry in logs if entry["event"] != "http.request"]
    assert said.count("dependency.lost") == 1, said
    assert not [event for event in said if "failed" in event or "unavailable" in event], said
    assert 'cloudmart_dependency_down{dependency="database"} 1.0' in metrics
    assert 'cloudmart_dependency_outages_total{dependency="database"} 1.0' in metrics
