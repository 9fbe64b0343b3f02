"""``cloudmart bench`` against a real deployment (MariaDB, RabbitMQ, Redis), as a user runs it:
a run with a failure mix checked by ``cloudmart.check``, an open-loop run, the floor, the report
and the notebook over results the test produced."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_RABBITMQ_URL, TEST_REDIS_URL, fresh_database, mysql_database_url
from processes import Deployment

from cloudmart import bench
from cloudmart.runner import run
from services._kit.roster import SERVICE_NAMES

pytestmark = [pytest.mark.mysql, pytest.mark.rabbitmq, pytest.mark.redis, pytest.mark.slow]

BASE_PORT = 28000


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    system = Deployment(
        database_url=mysql_database_url("cloudmart_test_bench"),
        namespace="bench-test",
        directory=tmp_path_factory.mktemp("bench"),
        base_port=BASE_PORT,
        rabbitmq_url=TEST_RABBITMQ_URL,
        redis_url=TEST_REDIS_URL,
    )
    try:
        system.cli("db", "init")
        for name in SERVICE_NAMES:
            system.start(name)
        yield system
    finally:
        system.stop_all()


def test_bench_with_a_mix_reports_failures_fully_compensated(
    deployment: Deployment, tmp_path: Path
) -> None:
    floor_file = tmp_path / "floor.json"
    floor_file.write_text(json.dumps({"sagas": {"orchestration": {"p50_ms": 10.0}}}))
    out = tmp_path / "mix.json"
    done = deployment.cli(
        "bench", "--base-port", str(BASE_PORT), "--sagas", "30", "--concurrency", "4",
        "--mix", "stock=0.1,payment=0.1,shipping=0.1", "--floor", str(floor_file),
        "--out", str(out),
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.read_text())
    assert (result["completed"], result["failed"], result["errors"]) == (21, 9, 0)
    assert result["unexpected"] == 0
    assert result["outcomes_by_kind"] == {
        "ok": {"COMPLETED": 21},
        "payment": {"FAILED": 3},
        "shipping": {"FAILED": 3},
        "stock": {"FAILED": 3},
    }
    assert result["check"]["ok"] is True and result["check"]["violations"] == 0
    assert result["check"]["sagas"] == {"COMPLETED": 21, "FAILED": 9}
    assert result["rollback_success"] == 1.0
    assert result["error_rate"] == 0.0
    assert len(result["latency_quantiles"]) == 100
    # Response times are over requests answered at once; each saga's long-poll is apart.
    assert result["rest_ms"]["count"] == 30 + result["status_read_ms"].get("count", 0)
    assert result["long_poll_ms"]["count"] >= 30
    assert result["long_poll_ms"]["p50"] >= result["start_response_ms"]["p50"]
    # What it cost: every process of the deployment (same user as the test) and the bench,
    # and at least the 5 service commits of each saga.
    services = {*SERVICE_NAMES, "bench"}
    assert services <= set(result["cpu"]["processes"])
    assert all(result["cpu"]["ms"][name] > 0 for name in services)
    assert 0 < result["cpu"]["busy"] <= 1
    assert result["database"]["Com_commit"] >= 5
    assert result["database"]["Questions"] > result["database"]["Com_commit"]
    assert "CPU ms per saga:" in done.stdout and "database per saga: Com_commit" in done.stdout
    assert result["latency_vs_floor"] == round(result["latency_ms"]["p50"] / 10.0, 2)
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu"]
    assert {"python", "sqlalchemy", "aio-pika", "redis"} <= result["versions"].keys()
    assert "MariaDB" in result["versions"]["database"]
    assert result["settings"]["mix"] == {"stock": 0.1, "payment": 0.1, "shipping": 0.1}
    assert result["settings"]["concurrency"] == 4 and result["settings"]["db_pool_size"] == 10
    assert result["timestamp"]
    assert "30/30 sagas" in done.stderr  # the progress line
    assert "invariants: ok" in done.stdout and "100.00% of FAILED sagas" in done.stdout


@pytest.mark.parametrize("pattern", ["orchestration", "choreography"])
def test_a_colocated_deployment_runs_the_same_sagas_in_one_process(
    pattern: str, deployment: Deployment, tmp_path: Path
) -> None:
    out = tmp_path / "colocated.json"
    done = deployment.cli(
        "bench", "--start", "--colocated", "--pattern", pattern, "--base-port", "31100",
        "--sagas", "20", "--concurrency", "4", "--mix", "stock=0.2,payment=0.2",
        "--out", str(out),
        CLOUDMART_DATABASE_URL=fresh_database(f"cloudmart_test_colocated_{pattern}"),
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.read_text())
    assert (result["completed"], result["failed"], result["errors"]) == (12, 8, 0)
    assert result["unexpected"] == 0 and result["check"]["ok"] is True
    assert result["rollback_success"] == 1.0
    # One process served the five ports; no broker carried a message.
    assert set(result["cpu"]["processes"]) == {"cloudmart", "mariadb", "bench"}
    assert result["settings"]["colocated"] is True
    assert "co-located" in done.stderr


def test_open_loop_starts_at_the_rate_asked(deployment: Deployment, tmp_path: Path) -> None:
    out = tmp_path / "open.json"
    deployment.cli(
        "bench", "--url", deployment.url("orchestrator"), "--sagas", "12", "--rate", "40",
        "--out", str(out),
    )  # fmt: skip
    result = json.loads(out.read_text())
    # Named by its URL alone, the deployment's services were found beside it.
    assert {"order", "orchestrator", "shipping"} <= set(result["cpu"]["processes"])
    assert (result["completed"], result["errors"]) == (12, 0)
    assert result["rate"] == 40.0 and result["settings"]["concurrency"] is None
    assert result["check"]["ok"] is True
    assert result["rollback_success"] is None  # nothing failed
    # Saga i is due at i/40 s: the run cannot end before the last one was due.
    assert result["wall_seconds"] >= 11 / 40


def test_bench_measures_the_floor_now_and_reports_against_it(
    deployment: Deployment, tmp_path: Path
) -> None:
    out = tmp_path / "now.json"
    done = deployment.cli(
        "bench", "--base-port", str(BASE_PORT), "--sagas", "8", "--concurrency", "4",
        "--floor", "now", "--out", str(out),
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.read_text())
    floor = result["floor"]
    assert floor["samples"] == 300
    assert floor["primitives"]["rabbitmq_round_trip"]["load"]["operations"] == 1000
    assert result["latency_vs_floor"] == round(
        result["latency_ms"]["p50"] / floor["sagas"]["orchestration"]["p50_ms"], 2
    )
    ceiling = floor["sagas"]["orchestration"]["ceiling"]["per_second"]
    assert f"of the floor's ceiling of {ceiling} sagas/s" in done.stdout
    assert "one orchestration saga" in done.stderr  # the floor, before the run


def test_floor_measures_the_three_primitives(deployment: Deployment, tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    done = deployment.cli(
        "bench", "floor", "--samples", "30", "--warmup", "3",
        "--load", "200", "--concurrency", "8", "--out", str(out),
    )  # fmt: skip
    figures = json.loads(out.read_text())
    for name in ("rabbitmq_round_trip", "mariadb_commit", "redis_stream_hop"):
        assert figures["primitives"][name]["count"] == 30
        assert 0 < figures["primitives"][name]["p50"] <= figures["primitives"][name]["p99"]
        load = figures["primitives"][name]["load"]
        assert (load["operations"], load["concurrency"]) == (200, 8)
        assert load["per_second"] > 0 and load["cpu_ms"]["client"] > 0
        assert load["cpu_ms_total"] >= load["cpu_ms"]["client"]
    # The echo server is a process of its own, and its CPU counts.
    assert figures["primitives"]["rabbitmq_round_trip"]["load"]["cpu_ms"]["server"] > 0
    ceiling = figures["sagas"]["orchestration"]["ceiling"]
    primitives = figures["primitives"]
    needed = sum(
        n * primitives[name]["load"]["cpu_ms_total"] for name, n in ceiling["counts"].items()
    )
    assert ceiling["cpu_ms"] == pytest.approx(needed, abs=0.01)
    assert ceiling["per_second"] == pytest.approx(
        figures["machine"]["cores"] * 1000 / ceiling["cpu_ms"], rel=0.01
    )
    assert "ceiling: 5 × rabbitmq_round_trip + 5 × mariadb_commit" in done.stdout
    orchestration = figures["sagas"]["orchestration"]
    assert orchestration["formula"] == "5 × rabbitmq_round_trip + 12 × mariadb_commit"
    assert orchestration["p50_ms"] > 0
    assert figures["sagas"]["choreography"]["counts"]["redis_stream_hop"] == 3
    assert "one orchestration saga" in done.stdout


def test_report_and_notebook_over_results_of_a_real_run(
    deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    results = tmp_path / "results"
    results.mkdir()
    for concurrency in (1, 4):
        result = run(
            bench.run(
                deployment.url("orchestrator"),
                10,
                concurrency,
                database_url=deployment.database_url,
            )
        )
        assert result.completed == 10
        (results / f"c{concurrency}.json").write_text(bench.to_json(result))

    done = deployment.cli(
        "bench", "report", *map(str, sorted(results.glob("*.json"))),
        "--out-dir", str(tmp_path / "report"),
    )  # fmt: skip
    assert (tmp_path / "report" / "latency_cdf.png").exists()
    assert (tmp_path / "report" / "throughput.png").exists()
    assert (tmp_path / "report" / "cpu_per_saga.png").exists()
    assert "patterns: skipped" in done.stdout  # one pattern only: a note, not a crash
    assert "| c1.json |" in (tmp_path / "report" / "report.md").read_text()

    notebook_path = Path(__file__).parents[2] / "notebooks" / "performance.ipynb"
    notebook = nbformat.read(notebook_path, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    monkeypatch.setenv("CLOUDMART_BENCH_RESULTS", str(results / "*.json"))
    nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "2 run(s)" in printed
    assert "patterns: nothing to draw" in printed
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    # The latency CDF, throughput against concurrency, and CPU per saga by process.
    assert len(images) == 3
