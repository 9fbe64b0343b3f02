"""The bench's arithmetic, the floor's formulas and the report, without any server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudmart import bench, floor, report
from cloudmart.cli import app


def test_quantile_is_nearest_rank() -> None:
    ordered = [1.0, 2.0, 3.0, 4.0]
    assert [bench.quantile(ordered, q) for q in (0.01, 0.25, 0.5, 0.75, 1.0)] == [
        1.0,
        1.0,
        2.0,
        3.0,
        4.0,
    ]


def test_percentiles_of_one_to_hundred() -> None:
    figures = bench.percentiles([float(i) for i in range(100, 0, -1)])
    assert figures == {
        "p50": 50.0,
        "p95": 95.0,
        "p99": 99.0,
        "max": 100.0,
        "mean": 50.5,
        "count": 100,
    }
    assert bench.percentiles([]) == {}


def test_quantiles_are_a_hundred_rising_points_ending_at_the_max() -> None:
    samples = [float(x) for x in (5, 1, 9, 3, 7, 2)]
    points = bench.quantiles(samples)
    assert len(points) == 100
    assert points == sorted(points)
    assert (points[0], points[49], points[-1]) == (1.0, 3.0, 9.0)
    assert bench.quantiles([]) == []


def test_cdf_points_pair_each_quantile_with_its_share() -> None:
    xs, ys = report.cdf_points([1.0, 2.0, 3.0, 4.0])
    assert xs == [1.0, 2.0, 3.0, 4.0]
    assert ys == [0.25, 0.5, 0.75, 1.0]


def test_parse_mix() -> None:
    assert bench.parse_mix("stock=0.1, payment=0.2,shipping=0") == {
        "stock": 0.1,
        "payment": 0.2,
        "shipping": 0.0,
    }
    assert bench.parse_mix("") == {}
    for bad in ("stock", "tax=0.1", "stock=1.5", "stock=0.6,payment=0.6"):
        with pytest.raises(ValueError):
            bench.parse_mix(bad)


def test_plan_makes_the_asked_share_of_each_failure_and_is_repeatable() -> None:
    kinds = bench.plan(30, {"stock": 0.1, "payment": 0.1, "shipping": 0.2})
    assert len(kinds) == 30
    assert (kinds.count("stock"), kinds.count("payment"), kinds.count("shipping")) == (3, 3, 6)
    assert kinds.count("ok") == 18
    assert bench.plan(30, {"stock": 0.1, "payment": 0.1, "shipping": 0.2}) == kinds
    assert bench.plan(5, {}) == ["ok"] * 5


def test_order_bodies_fail_where_the_business_rules_say() -> None:
    ok = bench.order_body(3, "ok")
    assert ok["customer_id"] == bench.BENCH_CUSTOMER
    assert ok["items"][0]["book_id"] in bench.BENCH_BOOKS
    assert ok["shipping_address"]["country"] == "JP"
    assert bench.order_body(3, "stock")["items"][0]["book_id"] == bench.SOLD_OUT_BOOK
    assert bench.order_body(3, "payment")["customer_id"] == bench.BROKE_CUSTOMER
    assert bench.order_body(3, "shipping")["shipping_address"]["country"] == "US"


def test_a_history_orders_from_a_catalogue_of_its_own() -> None:
    live, history = bench.BENCH, bench.HISTORY
    ids = {live.customer, live.broke_customer, *live.books, live.sold_out_book}
    assert ids.isdisjoint({history.customer, history.broke_customer, *history.books})
    assert history.sold_out_book not in ids
    for kind in ("ok", "stock", "payment", "shipping"):
        body = bench.order_body(3, kind, history)
        assert body["customer_id"] in (history.customer, history.broke_customer)
        assert body["items"][0]["book_id"] in (*history.books, history.sold_out_book)
    assert bench.order_body(3, "payment", history)["customer_id"] == history.broke_customer
    assert bench.order_body(3, "stock", history)["items"][0]["book_id"] == history.sold_out_book


def test_the_report_gives_a_preloads_own_time_apart_from_the_run() -> None:
    run = bench.BenchResult(
        pattern="orchestration", sagas=10, concurrency=4, wall_seconds=1.0, completed=10,
        failed=0, errors=0, sagas_per_second=10.0, latency_ms={"p50": 50.0},
        start_response_ms={},
    )  # fmt: skip
    assert "preloaded" not in bench.report(run)
    run.preload = {
        "sagas": 2000, "templates": 3, "templates_seconds": 1.5, "copy_seconds": 2.0,
        "seconds": 3.5, "copied_per_second": 1000,
    }  # fmt: skip
    assert (
        "preloaded 2000 finished sagas first in 3.5s (templates 1.5s, bulk copy 2.0s: "
        "1000 sagas/s)" in bench.report(run)
    )
    assert json.loads(bench.to_json(run))["preload"]["sagas"] == 2000


def test_a_preload_needs_the_deployments_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOUDMART_DATABASE_URL", raising=False)
    done = CliRunner().invoke(app, ["bench", "--preload", "10", "--sagas", "1"])
    assert done.exit_code == 2
    assert "cloudmart bench --preload needs CLOUDMART_DATABASE_URL" in done.output


def test_rollback_success_counts_each_broken_saga_once() -> None:
    assert bench.rollback_success(0, []) is None
    assert bench.rollback_success(4, []) == 1.0
    assert bench.rollback_success(4, ["FAILED a", "FAILED a", "FAILED b"]) == 0.5


def test_saga_floor_is_the_formula_over_the_primitives() -> None:
    primitives = {
        "rabbitmq_round_trip": {"p50": 2.0, "p99": 5.0},
        "mariadb_commit": {"p50": 1.0, "p99": 3.0},
        "redis_stream_hop": {"p50": 0.5, "p99": 1.0},
    }
    floors = floor.saga_floors(primitives)
    orchestration, choreography = floors["orchestration"], floors["choreography"]
    assert orchestration["formula"] == "5 × rabbitmq_round_trip + 12 × mariadb_commit"
    assert (orchestration["p50_ms"], orchestration["p99_ms"]) == (5 * 2.0 + 12 * 1.0, 25 + 36)
    assert choreography["formula"] == "9 × mariadb_commit + 3 × redis_stream_hop"
    assert choreography["p50_ms"] == 9 * 1.0 + 3 * 0.5
    assert bench.floor_ms({"sagas": floors}, "orchestration") == 22.0
    assert bench.floor_ms({"sagas": {}}, "orchestration") is None


def test_report_gives_the_share_of_the_floors_ceiling_when_the_floor_has_one() -> None:
    primitives = {
        name: {"p50": 1.0, "p99": 2.0, "load": {"cpu_ms_total": cpu}}
        for name, cpu in (
            ("rabbitmq_round_trip", 2.0),
            ("mariadb_commit", 0.5),
            ("redis_stream_hop", 0.5),
        )
    }
    floors = {"sagas": floor.saga_floors(primitives, cores=2)}
    # 5 × 2.0 + 5 × 0.5 = 12.5 ms of CPU a saga: 160 sagas/s on 2 cores.
    assert bench.ceiling_per_second(floors, "orchestration") == 160.0
    assert (
        bench.ceiling_per_second({"sagas": {"orchestration": {"p50_ms": 9}}}, "orchestration")
        is None
    )
    run = bench.BenchResult(
        pattern="orchestration", sagas=100, concurrency=32, wall_seconds=2.5, completed=100,
        failed=0, errors=0, sagas_per_second=40.0, latency_ms={"p50": 50.0},
        start_response_ms={}, floor=floors, latency_vs_floor=2.27,
    )  # fmt: skip
    assert "40.0 sagas/s is 25% of the floor's ceiling of 160.0 sagas/s" in bench.report(run)
    without = bench.BenchResult(**{**run.__dict__, "floor": {"sagas": {}}})
    assert "ceiling" not in bench.report(without)


def _result(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "pattern": "orchestration",
        "sagas": 100,
        "concurrency": 1,
        "rate": None,
        "mix": {},
        "completed": 100,
        "failed": 0,
        "errors": 0,
        "sagas_per_second": 10.0,
        "terminal_per_second": 10.0,
        "latency_ms": {"p50": 50.0, "p99": 90.0},
        "rest_ms": {"p50": 5.0, "p99": 9.0},
        "latency_quantiles": [float(i) for i in range(1, 101)],
        "rollback_success": None,
        "check": {"ok": True, "violations": 0},
        "latency_vs_floor": None,
        "timestamp": "2026-11-26T00:00:00+00:00",
    }
    return {**base, **overrides}


CPU_MS = {
    "orchestrator": 14.97,
    "mariadb": 7.17,
    "order": 6.22,
    "rabbitmq": 4.83,
    "bench": 4.67,
    "shipping": 3.9,
    "payment": 3.3,
    "inventory": 3.28,
}
CPU: dict[str, Any] = {"ms": CPU_MS, "total_ms": 48.33, "busy": 0.92, "processes": sorted(CPU_MS)}


def test_charts_without_their_data_say_what_they_need() -> None:
    one = [_result()]
    assert report.latency_cdf(one) is not None
    for chart in (
        report.throughput,
        report.patterns,
        report.failure_mix,
        report.floor_multiple,
        report.cpu_per_saga,
    ):
        with pytest.raises(report.NoData):
            chart(one)
    with pytest.raises(report.NoData):
        report.latency_cdf([_result(latency_quantiles=[])])


def test_charts_draw_when_the_runs_are_there() -> None:
    runs = [
        _result(concurrency=1),
        _result(concurrency=32, terminal_per_second=90.0),
        _result(pattern="choreography", concurrency=32, terminal_per_second=200.0),
        _result(concurrency=32, mix={"stock": 0.1, "payment": 0.2}, failed=30),
        _result(latency_vs_floor=3.2),
        _result(cpu=CPU),
    ]
    for name, chart in report.CHARTS.items():
        figure = chart(runs)
        assert figure.axes, name


def test_a_co_located_run_is_its_own_line_and_not_a_pattern_of_the_split_deployment() -> None:
    split = [_result(concurrency=c, terminal_per_second=10.0 * c) for c in (1, 32)]
    colocated = [
        _result(concurrency=c, terminal_per_second=20.0 * c, settings={"colocated": True})
        for c in (1, 32)
    ]
    choreography = _result(pattern="choreography", concurrency=32, terminal_per_second=99.0)
    runs = [*split, *colocated, choreography]
    assert report.label(colocated[1]) == "orchestration co-located c=32"
    assert report.label(split[1]) == "orchestration c=32"
    (ax,) = report.throughput(runs).axes
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines["orchestration"] == [10.0, 320.0]
    assert lines["orchestration co-located"] == [20.0, 640.0]
    # Side by side are the two patterns of the split deployment, never a co-located run.
    left, _ = report.patterns(runs).axes
    heights = sorted(bar.get_height() for bar in left.patches)
    assert heights == [99.0, 320.0]
    assert "| orchestration co-located | c=32 |" in report.markdown_table(runs)


def test_cpu_per_saga_stacks_each_process_and_ends_in_the_total() -> None:
    choreography = {
        "ms": {"order": 5.0, "mariadb": 3.0, "redis": 2.0, "bench": 1.0},
        "total_ms": 11.0,
        "busy": None,
        "processes": ["bench", "mariadb", "order", "redis"],
    }
    runs = [
        _result(cpu=CPU),
        _result(),
        _result(pattern="choreography", concurrency=8, cpu=choreography),
    ]
    (ax,) = report.cpu_per_saga(runs).axes
    assert [tick.get_text() for tick in ax.get_yticklabels()] == [
        "orchestration c=1",
        "choreography c=8",
    ]
    assert len(ax.patches) == 8 + 4
    segments = {str(bars.get_label()): list(bars) for bars in ax.containers}
    assert sorted(segments) == sorted({*CPU_MS, "redis"})
    assert [bar.get_width() for bar in segments["mariadb"]] == pytest.approx([7.17, 3.0])
    assert segments["mariadb"][0].get_facecolor() == segments["mariadb"][1].get_facecolor()
    assert len({bars[0].get_facecolor() for bars in segments.values()}) == len(segments)
    ends = {
        bar.get_y(): bar.get_x() + bar.get_width() for bars in segments.values() for bar in bars
    }
    assert sorted(ends.values()) == pytest.approx([11.0, 48.34])
    assert [text.get_text() for text in ax.texts] == ["48.3 ms, 92% busy", "11.0 ms"]
    legend = ax.get_legend()
    assert legend is not None
    assert [text.get_text() for text in legend.get_texts()] == [
        "orchestrator",
        "order",
        "mariadb",
        "bench",
        "rabbitmq",
        "shipping",
        "payment",
        "inventory",
        "redis",
    ]
    assert ax.get_title() == "CPU per saga, by process"


def test_cpu_per_saga_without_cpu_figures_says_what_it_needs() -> None:
    unmeasured = {"ms": {}, "total_ms": 0.0, "busy": 0.5, "processes": []}
    for runs in ([_result()], [_result(cpu=None)], [_result(cpu=unmeasured)]):
        with pytest.raises(report.NoData, match="measured on this machine"):
            report.cpu_per_saga(runs)


def _columns(table: str) -> list[dict[str, str]]:
    head, _, *rows = table.strip().splitlines()
    names = [cell.strip() for cell in head.strip("|").split("|")]
    return [
        dict(zip(names, (cell.strip() for cell in row.strip("|").split("|")), strict=True))
        for row in rows
    ]


def test_markdown_table_shows_cpu_and_commits_per_saga_and_dashes_without_them() -> None:
    old = _result(_file="old.json")
    assert "cpu" not in old and "database" not in old
    rows = _columns(
        report.markdown_table(
            [
                old,
                _result(
                    _file="new.json", cpu=CPU, database={"Com_commit": 5.67, "Questions": 36.77}
                ),
                _result(_file="idle.json", cpu={"ms": {}, "total_ms": 0.0, "busy": None}),
            ]
        )
    )
    assert [(row["CPU ms/saga"], row["commits/saga"]) for row in rows] == [
        ("–", "–"),
        ("48.33", "5.67"),
        ("–", "–"),
    ]
    assert [row["REST p50/p99 ms"] for row in rows] == ["5.0/9.0"] * 3
    assert rows[0]["run"] == "old.json" and rows[0]["check"] == "ok"


def test_markdown_table_shows_the_share_of_the_floors_ceiling_and_a_dash_without_one() -> None:
    measured = {"sagas": {"orchestration": {"p50_ms": 20.0, "ceiling": {"per_second": 160.0}}}}
    rows = _columns(
        report.markdown_table(
            [
                _result(_file="file.json", floor={"sagas": {"orchestration": {"p50_ms": 20.0}}}),
                _result(_file="now.json", floor=measured, sagas_per_second=40.0),
                _result(_file="none.json"),
            ]
        )
    )
    assert [row["of ceiling"] for row in rows] == ["–", "25%", "–"]


def test_markdown_table_has_a_row_per_run() -> None:
    table = report.markdown_table(
        [
            _result(_file="a.json"),
            _result(
                _file="b.json",
                rate=20.0,
                mix={"stock": 0.1},
                rollback_success=1.0,
                check={"ok": False, "violations": 2},
                latency_vs_floor=4.5,
            ),
        ]
    )
    lines = table.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    assert "| a.json |" in lines[2] and "c=1" in lines[2] and "| ok |" in lines[2]
    assert "20/s open" in lines[3] and "stock 0.1" in lines[3]
    assert "100%" in lines[3] and "2 ✗" in lines[3] and "4.5×" in lines[3]


def test_write_report_writes_charts_with_data_and_notes_the_rest(tmp_path: Path) -> None:
    files = []
    for i, result in enumerate([_result(), _result(concurrency=8)]):
        path = tmp_path / f"r{i}.json"
        path.write_text(json.dumps(result))
        files.append(str(path))
    said = report.write_report(report.load_results(files), tmp_path / "out")
    assert (tmp_path / "out" / "latency_cdf.png").stat().st_size > 0
    assert (tmp_path / "out" / "throughput.png").stat().st_size > 0
    assert not (tmp_path / "out" / "patterns.png").exists()
    assert any(line.startswith("patterns: skipped") for line in said)
    assert not (tmp_path / "out" / "cpu_per_saga.png").exists()
    assert any(line.startswith("cpu_per_saga: skipped, no run has CPU") for line in said)
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| r0.json |" in text and "| r1.json |" in text
    assert "- patterns: skipped" in text and "![latency_cdf](latency_cdf.png)" in text


def test_write_report_draws_cpu_per_saga_when_a_run_measured_it(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps(_result(cpu=CPU, database={"Com_commit": 5.67})))
    said = report.write_report(report.load_results([path]), tmp_path / "out")
    drawn = tmp_path / "out" / "cpu_per_saga.png"
    assert drawn.read_bytes().startswith(b"\x89PNG")
    assert f"cpu_per_saga: {drawn}" in said
    text = (tmp_path / "out" / "report.md").read_text()
    assert "![cpu_per_saga](cpu_per_saga.png)" in text
    assert "| 48.33 | 5.67 |" in text


def test_bench_report_command_on_a_single_pattern(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps(_result()))
    result = CliRunner().invoke(
        app, ["bench", "report", str(path), "--out-dir", str(tmp_path / "rep")]
    )
    assert result.exit_code == 0, result.output
    assert "patterns: skipped" in result.output
    assert (tmp_path / "rep" / "report.md").exists()


def test_bench_is_a_group_and_refuses_a_bad_mix() -> None:
    runner = CliRunner()
    helped = runner.invoke(app, ["bench", "--help"])
    assert helped.exit_code == 0
    assert "floor" in helped.output and "report" in helped.output and "--rate" in helped.output
    refused = runner.invoke(app, ["bench", "--mix", "tax=0.5"])
    assert refused.exit_code == 2
    assert "mix" in refused.output


def test_bench_refuses_a_floor_file_that_is_not_there(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    refused = CliRunner().invoke(app, ["bench", "--floor", "missing.json"])
    assert refused.exit_code == 2
    assert "no file 'missing.json' (or say `now`)" in refused.output


def test_the_floor_measured_now_needs_the_three_servers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("CLOUDMART_DATABASE_URL", "CLOUDMART_RABBITMQ_URL", "CLOUDMART_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env around
    runner = CliRunner()
    for args in (["bench", "--floor", "now"], ["bench", "floor"]):
        refused = runner.invoke(app, args)
        assert refused.exit_code == 2, args
        assert "CLOUDMART_RABBITMQ_URL and CLOUDMART_REDIS_URL" in " ".join(refused.output.split())


def test_report_passes_over_the_floor_and_refuses_what_is_not_results(tmp_path: Path) -> None:
    run, floor_file, junk = tmp_path / "run.json", tmp_path / "floor.json", tmp_path / "junk.json"
    run.write_text(json.dumps(_result()))
    floor_file.write_text(json.dumps({"primitives": {}, "sagas": {}, "timestamp": "t"}))
    junk.write_text(json.dumps({"hello": 1}))
    assert [r["_file"] for r in report.load_results([floor_file, run])] == ["run.json"]
    runner = CliRunner()
    out = tmp_path / "report"
    ok = runner.invoke(app, ["bench", "report", str(run), str(floor_file), "--out-dir", str(out)])
    assert ok.exit_code == 0, ok.output
    assert (out / "report.md").exists()
    for given in ([str(junk)], [str(floor_file)], [str(tmp_path / "missing.json")]):
        refused = runner.invoke(app, ["bench", "report", *given, "--out-dir", str(out)])
        assert refused.exit_code == 2
        assert "cloudmart bench report:" in refused.output
        assert "Traceback" not in refused.output


def test_the_committed_runs_draw_every_chart() -> None:
    # docs/bench/results: the runs behind the README's charts (scripts/bench-charts.sh); the
    # report and the notebook must go on reading them as the results format grows.
    committed = Path(__file__).parents[2] / "docs" / "bench" / "results"
    results = report.load(str(committed / "*.json"))
    assert {report.deployment(r) for r in results} == {
        "orchestration",
        "choreography",
        "orchestration co-located",
    }
    for name, chart in report.CHARTS.items():
        assert chart(results).axes, name
