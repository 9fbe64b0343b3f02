"""The cloudmart command, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import answers_200, mysql_database_url, port_free, until_sync
from typer.testing import CliRunner

from cloudmart.cli import app
from cloudmart.schema import generate_init_sql

runner = CliRunner()


def test_db_sql_prints_init_sql() -> None:
    result = runner.invoke(app, ["db", "sql"])
    assert result.exit_code == 0
    assert result.output == generate_init_sql()


def test_db_init_creates_database_and_seeds_mariadb(monkeypatch: pytest.MonkeyPatch) -> None:
    url = mysql_database_url("cloudmart_test_cli")
    # drop it again: `db init` must create a missing database itself
    server = sa.create_engine(
        sa.engine.make_url(url)._replace(drivername="mysql+pymysql", database=None)
    )
    with server.begin() as conn:
        conn.execute(sa.text("DROP DATABASE cloudmart_test_cli"))
    monkeypatch.setenv("CLOUDMART_DATABASE_URL", url)
    first = runner.invoke(app, ["db", "init", "--seed"])
    again = runner.invoke(app, ["db", "init", "--seed"])
    assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
    with server.connect() as conn:
        books = conn.scalar(sa.text("SELECT COUNT(*) FROM cloudmart_test_cli.books"))
    assert books == 10
    reset = runner.invoke(app, ["db", "init", "--reset"])
    assert reset.exit_code == 0
    with server.connect() as conn:
        assert conn.scalar(sa.text("SELECT COUNT(*) FROM cloudmart_test_cli.books")) == 0
    server.dispose()


def test_db_init_embedded_sqlite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CLOUDMART_DATABASE_URL", raising=False)
    monkeypatch.setenv("CLOUDMART_SQLITE_PATH", str(tmp_path / "cm.db"))
    result = runner.invoke(app, ["db", "init", "--seed"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cm.db").stat().st_size > 0


def test_serve_without_infrastructure_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOUDMART_DATABASE_URL", raising=False)
    result = runner.invoke(app, ["serve", "order"])
    assert result.exit_code == 2
    assert "CLOUDMART_DATABASE_URL" in result.output


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    def healthy() -> bool:
        assert proc.poll() is None, "cloudmart up exited early"
        return answers_200(url)

    until_sync(healthy, timeout=timeout, interval=0.05, what=f"{url} healthy")


ORDER = {
    "customer_id": 1,
    "items": [{"book_id": 1, "quantity": 2}],
    "shipping_address": {
        "name": "Hanako",
        "line1": "1-2-3",
        "city": "Tokyo",
        "postal_code": "150-0002",
        "country": "JP",
    },
}


def _saga_status(order_id: str) -> str:
    return str(
        httpx.get(f"http://127.0.0.1:8005/saga/{order_id}/status", timeout=5).json()["status"]
    )


@pytest.mark.slow
def test_up_embedded_runs_sagas_on_all_five_ports_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    if not all(port_free(p) for p in (8001, 8002, 8003, 8004, 8005)):
        pytest.skip("ports 8001-8005 are taken by a running CloudMart")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDMART_")}
    env["CLOUDMART_SQLITE_PATH"] = str(tmp_path / "up.db")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudmart", "up"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        for port in (8001, 8002, 8003, 8004, 8005):
            _wait_healthy(f"http://127.0.0.1:{port}/health", proc)
        started = httpx.post("http://127.0.0.1:8005/saga/start", json=ORDER, timeout=5)
        assert started.status_code == 202, started.text
        order_id = started.json()["order_id"]
        until_sync(
            lambda: _saga_status(order_id) in ("COMPLETED", "FAILED"),
            timeout=20,
            interval=0.05,
            what="the saga finished",
        )
        assert _saga_status(order_id) == "COMPLETED"
        order = httpx.get(f"http://127.0.0.1:8001/orders/{order_id}", timeout=5).json()
        assert order["status"] == "COMPLETED"
        stock = json.loads(httpx.get("http://127.0.0.1:8002/inventory/1", timeout=5).text)
        assert stock["reserved"] == 0
        bench = subprocess.run(
            [
                sys.executable,
                "-m",
                "cloudmart",
                "bench",
                "--sagas",
                "6",
                "--concurrency",
                "2",
                "--out",
                str(tmp_path / "results.json"),
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert bench.returncode == 0, bench.stdout + bench.stderr
        results = json.loads((tmp_path / "results.json").read_text())
        assert (results["completed"], results["errors"]) == (6, 0)
        assert results["latency_ms"]["p50"] > 0
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
    assert code == 0


@pytest.mark.slow
@pytest.mark.rabbitmq
def test_up_on_real_servers_supervises_five_processes_and_stops_them_all(tmp_path: Path) -> None:
    if not all(port_free(p) for p in (8001, 8002, 8003, 8004, 8005)):
        pytest.skip("ports 8001-8005 are taken by a running CloudMart")
    url = mysql_database_url("cloudmart_test_cli_up")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDMART_")}
    env.update(
        CLOUDMART_DATABASE_URL=url,
        CLOUDMART_NAMESPACE=f"test-up-{os.getpid()}",
        CLOUDMART_ENV="test",
    )
    init = subprocess.run(
        [sys.executable, "-m", "cloudmart", "db", "init", "--seed"],
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert init.returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudmart", "up"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        for port in (8001, 8002, 8003, 8004, 8005):
            _wait_healthy(f"http://127.0.0.1:{port}/health", proc)
        started = httpx.post("http://127.0.0.1:8005/saga/start", json=ORDER, timeout=5)
        assert started.status_code == 202, started.text
        order_id = started.json()["order_id"]
        status = httpx.get(
            f"http://127.0.0.1:8005/saga/{order_id}/status", params={"wait": 15}, timeout=20
        ).json()
        assert status["status"] == "COMPLETED"
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, output
    assert "orchestrator |" in output  # every process's lines are prefixed with its name
    assert all(port_free(p) for p in (8001, 8002, 8003, 8004, 8005))
