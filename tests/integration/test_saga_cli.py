"""``cloudmart saga ...`` against a real orchestration deployment (its own ports and database,
the prod profile, so every call needs the API key): what an operator types and reads."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import until_sync
from domain_data import clean
from processes import Deployment, deployed
from rest_support import VALID_ADDRESS
from typer.testing import CliRunner, Result

from activities import Database
from cloudmart.cli import app

pytestmark = [pytest.mark.mysql, pytest.mark.rabbitmq]

KEY = "list-cli-key-8f2b"
runner = CliRunner()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(
        "orchestration",
        "cloudmart_test_list_cli",
        tmp_path_factory.mktemp("saga-cli"),
        base_port=29500,
        CLOUDMART_ENV="prod",
        CLOUDMART_API_KEY=KEY,
        CLOUDMART_REQUEST_TIMEOUT="5",
    ) as deployment:

        async def catalogue() -> None:
            db = Database.from_url(deployment.database_url)
            try:
                await clean(db)
            finally:
                await db.dispose()

        asyncio.run(catalogue())
        yield deployment


@pytest.fixture
def url(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CLOUDMART_API_KEY", KEY)
    return deployment.url("orchestrator")


@pytest.fixture
def api(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    ) as client:
        yield client


def start(api: httpx.Client, *, country: str = "JP") -> str:
    body = {
        "customer_id": 1,
        "items": [{"book_id": 3, "quantity": 1}],
        "shipping_address": {**VALID_ADDRESS, "country": country},
    }
    response = api.post("/saga/start", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["order_id"])


def finished(api: httpx.Client, order_id: str) -> str:
    status = api.get(f"/saga/{order_id}/status", params={"wait": 20}).json()["status"]
    assert status in ("COMPLETED", "FAILED"), status
    return str(status)


def saga(*args: str) -> Result:
    result = runner.invoke(app, ["saga", *args])
    assert "Traceback" not in result.output
    assert KEY not in result.output + result.stderr
    return result


def refusal(result: Result, exit_code: int) -> str:
    """The one line a refused command prints on stderr, and nothing on stdout."""
    assert result.exit_code == exit_code, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def listed(*args: str) -> dict[str, Any]:
    result = saga("list", *args, "--json")
    assert result.exit_code == 0, result.output
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def test_list_shows_a_table_and_pages_as_json(api: httpx.Client, url: str) -> None:
    done = start(api)
    failed = start(api, country="US")
    assert (finished(api, done), finished(api, failed)) == ("COMPLETED", "FAILED")

    table = saga("list", "--url", url)
    assert table.exit_code == 0, table.output
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["ORDER", "ID", "STATUS"]
    assert rows[0].split()[:2] == [failed, "FAILED"]
    assert "shipping.arrange_shipping" in rows[0]
    assert rows[1].split()[:2] == [done, "COMPLETED"]

    only_failed = listed("--url", url, "--status", "FAILED", "--order-id", failed[:8])
    assert [s["order_id"] for s in only_failed["sagas"]] == [failed]
    by_step = listed("--url", url, "--failed-step", "shipping.arrange_shipping")
    assert failed in [s["order_id"] for s in by_step["sagas"]]
    assert done not in [s["order_id"] for s in by_step["sagas"]]

    everything = listed("--url", url)["sagas"]
    one_by_one = listed("--url", url, "--limit", "1", "--all")
    assert one_by_one["sagas"] == everything
    assert one_by_one["next_cursor"] is None

    first = saga("list", "--url", url, "--limit", "1")
    assert first.exit_code == 0
    cursor = first.stderr.split("--cursor ", 1)[1].split()[0]
    second = listed("--url", url, "--limit", "1", "--cursor", cursor)
    assert second["sagas"] == everything[1:2]


def test_a_bad_filter_is_one_line_naming_it(url: str) -> None:
    line = refusal(saga("list", "--url", url, "--created-after", "yesterday"), 1)
    assert line.startswith("cloudmart saga list: 422 validation_error")
    assert "created_after" in line and "RFC 3339" in line


def test_stats_count_the_sagas_by_status(api: httpx.Client, url: str) -> None:
    finished(api, start(api))
    counts = json.loads(saga("stats", "--url", url, "--json").stdout)
    assert counts["by_status"]["COMPLETED"] >= 1
    table = saga("stats", "--url", url)
    assert table.exit_code == 0
    assert any(line.split()[0] == "COMPLETED" for line in table.stdout.splitlines()[1:])


def test_show_and_history_print_the_steps_and_the_events(api: httpx.Client, url: str) -> None:
    order_id = start(api, country="US")
    finished(api, order_id)

    shown = saga("show", order_id, "--url", url)
    assert shown.exit_code == 0, shown.output
    assert f"order    {order_id}" in shown.stdout
    assert "status   FAILED" in shown.stdout
    states = {
        line.split()[0]: line.split()[1]
        for line in shown.stdout.splitlines()
        if line.startswith(("order.", "inventory.", "payment.", "shipping."))
    }
    assert states["payment.process_payment"] == "COMPENSATED"
    assert states["shipping.arrange_shipping"] == "FAILED"
    as_json = json.loads(saga("show", order_id, "--url", url, "--json").stdout)
    assert as_json["order_id"] == order_id

    events = saga("history", order_id, "--url", url)
    assert events.exit_code == 0, events.output
    types = [line.split()[3] for line in events.stdout.splitlines()[1:]]
    assert types[0] == "WorkflowStarted" and types[-1] == "WorkflowFailed"
    assert "CompensationCompleted" in types
    raw = json.loads(saga("history", order_id, "--url", url, "--json").stdout)
    assert [e["type"] for e in raw] == types


def test_an_exported_history_replays_offline_as_matching(
    api: httpx.Client, url: str, tmp_path: Path, deployment: Deployment
) -> None:
    order_id = start(api)
    finished(api, order_id)
    target = tmp_path / "saga.json"
    exported = saga("export", order_id, "--url", url, "--out", str(target))
    assert exported.exit_code == 0, exported.output
    assert json.loads(target.read_text())["workflow_id"] == order_id
    replayed = CliRunner().invoke(app, ["replay", str(target)])
    assert replayed.exit_code == 0, replayed.output
    assert f"{order_id}  place_order  matching" in replayed.output
    from_database = CliRunner(env={"CLOUDMART_DATABASE_URL": deployment.database_url}).invoke(
        app, ["replay", "--status", "COMPLETED", "--workflow", "place_order", "--limit", "500"]
    )
    assert from_database.exit_code == 0, from_database.output
    assert f"{order_id}  place_order  matching" in from_database.output


def test_cancel_is_accepted_while_the_saga_runs_and_refused_once_it_finished(
    api: httpx.Client, url: str, deployment: Deployment
) -> None:
    deployment.pause("shipping")  # arrange_shipping waits in its queue
    try:
        order_id = start(api)

        def paid() -> bool:
            status = api.get(f"/saga/{order_id}/status").json()["status"]
            return bool(status == "PAYMENT_COMPLETED")

        until_sync(paid, timeout=20, what="payment completed")
        cancelled = saga("cancel", order_id, "--url", url)
        assert cancelled.exit_code == 0, cancelled.output
        assert cancelled.stdout.startswith(f"cancel accepted: saga of order {order_id} is ")
    finally:
        deployment.resume("shipping")
    assert finished(api, order_id) == "FAILED"
    line = refusal(saga("cancel", order_id, "--url", url), 1)
    assert line.startswith("cloudmart saga cancel: 409 ")
    assert line.endswith("(the saga is FAILED)")


def test_retry_and_compensate_act_on_a_saga_held_before_its_pivot(
    api: httpx.Client, url: str, deployment: Deployment
) -> None:
    deployment.pause("shipping")
    try:
        order_id = start(api)

        def paid() -> bool:
            status = api.get(f"/saga/{order_id}/status").json()["status"]
            return bool(status == "PAYMENT_COMPLETED")

        until_sync(paid, timeout=20, what="payment completed")
        retried = saga("retry", order_id, "--reason", "shipping looks stuck", "--url", url)
        assert retried.exit_code == 0, retried.output
        assert retried.stdout.startswith(f"retry accepted: saga of order {order_id} is ")
        undone = saga("compensate", order_id, "--reason", "customer called", "--url", url)
        assert undone.exit_code == 0, undone.output
        assert undone.stdout.startswith(f"compensate accepted: saga of order {order_id} is ")
    finally:
        deployment.resume("shipping")
    assert finished(api, order_id) == "FAILED"
    shown = saga("show", order_id, "--url", url).stdout
    assert "reason   operator: customer called" in shown
    actions = json.loads(saga("history", order_id, "--url", url, "--json").stdout)
    reasons = [e["payload"].get("reason") for e in actions]
    assert "shipping looks stuck" in reasons and "customer called" in reasons
    line = refusal(saga("resume", order_id, "--reason", "again", "--url", url), 1)
    assert line.startswith("cloudmart saga resume: 409 ")
    assert line.endswith("(the saga is FAILED)")


@pytest.mark.parametrize(
    "command",
    [
        ["show", "no-such-order"],
        ["history", "no-such-order"],
        ["cancel", "no-such-order"],
        ["retry", "no-such-order", "--reason", "stuck on a dead broker"],
        ["resume", "no-such-order", "--reason", "fixed code deployed"],
        ["compensate", "no-such-order", "--reason", "customer asked"],
    ],
)
def test_an_unknown_saga_is_one_line_and_exit_1(url: str, command: list[str]) -> None:
    line = refusal(saga(*command, "--url", url), 1)
    assert line == f"cloudmart saga {command[0]}: 404 SagaUnknown: no saga for order no-such-order"


@pytest.mark.parametrize("action", ["retry", "resume", "compensate"])
def test_an_action_without_a_reason_is_refused_before_any_request(action: str) -> None:
    result = saga(action, "some-order", "--url", "http://127.0.0.1:9")
    assert result.exit_code == 2
    assert "--reason" in result.output


def test_without_the_key_the_command_says_which_variable_to_set(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLOUDMART_API_KEY")
    line = refusal(saga("list", "--url", url), 1)
    assert line.startswith("cloudmart saga list: 401 unauthorized")
    assert line.endswith("(set CLOUDMART_API_KEY)")


def test_an_orchestrator_that_is_not_there_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        line = refusal(saga("list", "--url", f"http://127.0.0.1:{port}"), 2)
    assert line.startswith(
        f"cloudmart saga list: cannot reach the orchestrator at http://127.0.0.1:{port}"
    )
    assert "refused" in line.lower()
