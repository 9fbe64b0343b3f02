"""The cloudmart command, as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from conftest import mysql_database_url
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


def _free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "cloudmart up exited early"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} not healthy within {timeout}s")


@pytest.mark.slow
def test_up_embedded_serves_all_four_services_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    if not all(_free(p) for p in (8001, 8002, 8003, 8004)):
        pytest.skip("ports 8001-8004 are taken by a running CloudMart")
    env = {k: v for k, v in os.environ.items() if k != "CLOUDMART_DATABASE_URL"}
    env["CLOUDMART_SQLITE_PATH"] = str(tmp_path / "up.db")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudmart", "up"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        for port in (8001, 8002, 8003, 8004):
            _wait_healthy(f"http://127.0.0.1:{port}/health", proc)
        order = {
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
        created = httpx.post("http://127.0.0.1:8001/orders", json=order, timeout=5)
        assert created.status_code in (201, 202), created.text
        order_id = created.json()["order_id"]
        reserved = httpx.post(
            "http://127.0.0.1:8002/inventory/reserve",
            json={"order_id": order_id, "items": order["items"]},
            timeout=5,
        )
        assert reserved.status_code == 200, reserved.text
        assert (
            json.loads(httpx.get("http://127.0.0.1:8002/inventory/1", timeout=5).text)["reserved"]
            == 2
        )
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
    assert code == 0
