"""``cloudmart bench report``: charts and a table from ``cloudmart bench --out`` results.

Each chart is a function of the list of results (the JSON files' content) that returns a
matplotlib figure, or raises :class:`NoData` saying what it would need; the command line and
``notebooks/performance.ipynb`` draw the same charts through these functions:

=========================  =================================================================
``latency_cdf``            start→terminal latency CDF of every run (its 1..100 quantiles)
``throughput``             ended sagas/s against concurrency, closed-loop runs without a mix
``patterns``               orchestration and choreography side by side (throughput, p50)
``failure_mix``            p50 latency and throughput against the share of failing orders
``floor_multiple``         p50 latency as a multiple of the floor (runs given ``--floor``)
``cpu_per_saga``           CPU ms per ended saga, stacked by process (runs with ``cpu``)
=========================  =================================================================

:func:`markdown_table` lists every run; :func:`write_report` writes the PNGs and ``report.md``.
matplotlib (the ``bench`` extra) is imported only here, on the Agg backend (no display).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Result = dict[str, Any]


class NoData(Exception):
    """The results hold nothing this chart can draw; the message says what it needs."""


class NotResults(ValueError):
    """A file given as results is not one ``cloudmart bench --out`` wrote."""


_RESULT_KEYS = frozenset({"pattern", "sagas", "completed", "failed", "errors"})


def load_results(paths: Iterable[str | Path]) -> list[Result]:
    """The content of each results file, its name under ``"_file"``, oldest run first.

    A ``cloudmart bench floor`` file is passed over (``*.json`` picks it up beside the results);
    any other file that is not a results file raises :class:`NotResults`, as does finding none.
    """
    results = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise NotResults(f"{path}: not a results file ({exc})") from exc
        if isinstance(data, dict) and "primitives" in data and "pattern" not in data:
            continue  # the floor
        if not isinstance(data, dict) or not data.keys() >= _RESULT_KEYS:
            raise NotResults(f"{path}: not a results file of `cloudmart bench --out`")
        data["_file"] = Path(path).name
        results.append(data)
    if not results:
        raise NotResults("no results file among the files given")
    return sorted(results, key=lambda r: (r.get("timestamp", ""), r["_file"]))


def load(pattern: str) -> list[Result]:
    """Results from the files matching a glob ``pattern`` (e.g. ``bench-results/*.json``)."""
    import glob

    return load_results(sorted(glob.glob(pattern)))


def deployment(result: Result) -> str:
    """The pattern, and whether every service ran in one process: ``"orchestration"``,
    ``"orchestration co-located"``... (runs of the two deployments are told apart)."""
    colocated = bool((result.get("settings") or {}).get("colocated"))
    return f"{result['pattern']} co-located" if colocated else str(result["pattern"])


def label(result: Result) -> str:
    """``"orchestration c=32"``, ``"choreography 50/s mix 0.3"``,
    ``"orchestration co-located c=1"``..."""
    load_ = f"{result['rate']:g}/s" if result.get("rate") else f"c={result['concurrency']}"
    share = failure_share(result)
    return f"{deployment(result)} {load_}" + (f" mix {share:g}" if share else "")


def failure_share(result: Result) -> float:
    """The share of orders the run's mix made fail."""
    return round(float(sum((result.get("mix") or {}).values())), 4)


def cdf_points(quantiles: Sequence[float]) -> tuple[list[float], list[float]]:
    """(latencies, cumulative shares) of a 1..100 quantile list, ready to plot."""
    n = len(quantiles)
    return list(quantiles), [(i + 1) / n for i in range(n)]


def _figure(columns: int = 1) -> tuple[Figure, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4 * columns, 4.2), layout="constrained")
    axes = figure.subplots(1, columns)
    return figure, axes


def latency_cdf(results: Sequence[Result]) -> Figure:
    runs = [r for r in results if r.get("latency_quantiles")]
    if not runs:
        raise NoData("no run has latency quantiles")
    figure, ax = _figure()
    for r in runs:
        xs, ys = cdf_points(r["latency_quantiles"])
        ax.plot(xs, ys, label=label(r))
    ax.set_xscale("log")
    ax.set_xlabel("start → terminal latency (ms, log)")
    ax.set_ylabel("share of sagas")
    ax.set_title("Saga latency CDF")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return figure


def _closed_clean(results: Sequence[Result]) -> list[Result]:
    return [r for r in results if not r.get("rate") and not failure_share(r)]


def throughput(results: Sequence[Result]) -> Figure:
    by_pattern: dict[str, dict[int, float]] = {}
    for r in _closed_clean(results):
        by_pattern.setdefault(deployment(r), {})[r["concurrency"]] = _rate(r)
    if not any(len(points) >= 2 for points in by_pattern.values()):
        raise NoData("needs closed-loop runs without a mix at two or more concurrencies")
    figure, ax = _figure()
    for pattern, points in sorted(by_pattern.items()):
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=pattern)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (sagas in flight)")
    ax.set_ylabel("ended sagas / s")
    ax.set_title("Throughput against concurrency")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return figure


def _rate(r: Result) -> float:
    return float(r.get("terminal_per_second") or r.get("sagas_per_second") or 0.0)


def patterns(results: Sequence[Result]) -> Figure:
    table: dict[int, dict[str, Result]] = {}
    for r in _closed_clean(results):
        if deployment(r) == r["pattern"]:  # the split deployments, one process per service
            table.setdefault(r["concurrency"], {})[r["pattern"]] = r  # the latest run wins
    both = {c: runs for c, runs in sorted(table.items()) if len(runs) == 2}
    if not both:
        raise NoData("needs an orchestration and a choreography run at the same concurrency")
    figure, (left, right) = _figure(2)
    concurrencies = list(both)
    width = 0.38
    for offset, pattern in ((-width / 2, "orchestration"), (width / 2, "choreography")):
        xs = [i + offset for i in range(len(concurrencies))]
        left.bar(xs, [_rate(both[c][pattern]) for c in concurrencies], width, label=pattern)
        right.bar(
            xs, [both[c][pattern]["latency_ms"]["p50"] for c in concurrencies], width, label=pattern
        )
    for ax, title, unit in (
        (left, "Throughput", "ended sagas / s"),
        (right, "Latency p50", "ms"),
    ):
        ax.set_xticks(range(len(concurrencies)), [f"c={c}" for c in concurrencies])
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.legend()
    figure.suptitle("Orchestration and choreography side by side")
    return figure


def failure_mix(results: Sequence[Result]) -> Figure:
    by_pattern: dict[str, dict[float, Result]] = {}
    for r in results:
        if not r.get("rate") and r.get("latency_ms"):
            by_pattern.setdefault(deployment(r), {})[failure_share(r)] = r
    if not any(len(points) >= 2 for points in by_pattern.values()):
        raise NoData("needs runs of one pattern with two or more failure shares")
    figure, (left, right) = _figure(2)
    for pattern, points in sorted(by_pattern.items()):
        xs = sorted(points)
        left.plot(xs, [points[x]["latency_ms"]["p50"] for x in xs], marker="o", label=pattern)
        right.plot(xs, [_rate(points[x]) for x in xs], marker="o", label=pattern)
    for ax, unit in ((left, "p50 latency (ms)"), (right, "ended sagas / s")):
        ax.set_xlabel("share of orders that fail")
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
        ax.legend()
    figure.suptitle("Effect of the failure mix")
    return figure


def floor_multiple(results: Sequence[Result]) -> Figure:
    runs = [r for r in results if r.get("latency_vs_floor")]
    if not runs:
        raise NoData("no run was given a floor (cloudmart bench --floor FILE)")
    figure, ax = _figure()
    ax.barh([label(r) for r in runs], [r["latency_vs_floor"] for r in runs])
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel("p50 latency / floor of one saga")
    ax.set_title("Latency as a multiple of the floor")
    return figure


def _cpu_ms(result: Result) -> dict[str, float]:
    return dict((result.get("cpu") or {}).get("ms") or {})


def _cpu_total(result: Result) -> float | None:
    if not _cpu_ms(result):
        return None
    return float(result["cpu"].get("total_ms") or sum(_cpu_ms(result).values()))


def cpu_per_saga(results: Sequence[Result]) -> Figure:
    """One bar per run that measured CPU, stacked by process (CPU ms per ended saga of each, one
    colour per process), ending in the total and the machine's busy share during the run.

    When the machine is near 100% busy, throughput is bounded by CPU and the longest segment is
    the process to make cheaper; the bench's own share is there because it runs on the same
    cores as what it measures.
    """
    runs = [r for r in results if _cpu_ms(r)]
    if not runs:
        raise NoData(
            "no run has CPU figures: needs runs measured on this machine (results with cpu)"
        )
    measured = [_cpu_ms(r) for r in runs]
    totals: dict[str, float] = {}
    for each in measured:
        for name, ms in each.items():
            totals[name] = totals.get(name, 0.0) + ms
    names = sorted(totals, key=lambda name: (-totals[name], name))
    import matplotlib

    palette = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    figure, ax = _figure()
    figure.set_size_inches(9.6, max(4.2, 1.5 + 0.5 * len(runs)))
    ends = [0.0] * len(runs)
    for i, name in enumerate(names):
        rows = [y for y, each in enumerate(measured) if name in each]
        widths = [measured[y][name] for y in rows]
        lefts = [ends[y] for y in rows]
        ax.barh(rows, widths, left=lefts, color=palette(i % palette.N), label=name)
        for y, width in zip(rows, widths, strict=True):
            ends[y] += width
    longest = max(ends)
    for y, r in enumerate(runs):
        busy = r["cpu"].get("busy")
        shown = f"{_cpu_total(r):.1f} ms" + (f", {busy:.0%} busy" if busy is not None else "")
        ax.text(ends[y] + longest * 0.01, y, shown, va="center", fontsize="small")
    ax.set_xlim(0, longest * 1.3 or 1.0)
    ax.set_yticks(range(len(runs)), [label(r) for r in runs])
    ax.invert_yaxis()
    ax.set_xlabel("CPU ms per ended saga")
    ax.set_title("CPU per saga, by process")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


CHARTS: dict[str, Callable[[Sequence[Result]], Figure]] = {
    "latency_cdf": latency_cdf,
    "throughput": throughput,
    "patterns": patterns,
    "failure_mix": failure_mix,
    "floor_multiple": floor_multiple,
    "cpu_per_saga": cpu_per_saga,
}


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes (what the report files and the notebook show)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _cell(value: Any, fmt: str = "{}") -> str:
    return "–" if value is None else fmt.format(value)


def _of_ceiling(r: Result) -> float | None:
    from cloudmart.bench import ceiling_per_second

    ceiling = ceiling_per_second(r["floor"], r["pattern"]) if r.get("floor") else None
    return r["sagas_per_second"] / ceiling if ceiling else None


def markdown_table(results: Sequence[Result]) -> str:
    """One row per run: load, outcomes, throughput, latency, REST times (the requests answered
    at once), CPU ms and database commits per ended saga, rollback, check, multiple of the floor,
    and completed sagas/s as a share of the floor's ceiling (a floor measured under load).
    A figure the run did not record (an older results file) shows as ``–``."""
    head = (
        "| run | when | pattern | load | mix | sagas | completed | failed | errors | "
        "sagas/s | p50 ms | p99 ms | REST p50/p99 ms | CPU ms/saga | commits/saga | rollback | "
        "check | × floor | of ceiling |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        lat, rest = r.get("latency_ms") or {}, r.get("rest_ms") or {}
        check = r.get("check")
        verdict = "–" if check is None else ("ok" if check["ok"] else f"{check['violations']} ✗")
        mix = ", ".join(f"{k} {v:g}" for k, v in (r.get("mix") or {}).items()) or "–"
        load_ = f"{r['rate']:g}/s open" if r.get("rate") else f"c={r['concurrency']}"
        lines.append(
            f"| {r.get('_file', '')} | {r.get('timestamp', '')} | {deployment(r)} | {load_} | "
            f"{mix} | {r['sagas']} | {r['completed']} | {r['failed']} | {r['errors']} | "
            f"{_rate(r)} | {_cell(lat.get('p50'))} | {_cell(lat.get('p99'))} | "
            f"{_cell(rest.get('p50'))}/{_cell(rest.get('p99'))} | {_cell(_cpu_total(r))} | "
            f"{_cell((r.get('database') or {}).get('Com_commit'))} | "
            f"{_cell(r.get('rollback_success'), '{:.0%}')} | {verdict} | "
            f"{_cell(r.get('latency_vs_floor'), '{}×')} | {_cell(_of_ceiling(r), '{:.0%}')} |"
        )
    return "\n".join(lines) + "\n"


def write_report(results: Sequence[Result], out_dir: str | Path) -> list[str]:
    """Every chart that has data as ``<name>.png`` and ``report.md`` in ``out_dir``; one line
    per chart (written, or skipped and why)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    said: list[str] = []
    sections = ["# Benchmark report", "", markdown_table(results)]
    for name, chart in CHARTS.items():
        try:
            figure = chart(results)
        except NoData as why:
            said.append(f"{name}: skipped, {why}")
            sections.append(f"- {name}: skipped, {why}")
            continue
        path = out / f"{name}.png"
        path.write_bytes(png(figure))
        said.append(f"{name}: {path}")
        sections.append(f"![{name}]({name}.png)")
    (out / "report.md").write_text("\n".join(sections) + "\n")
    said.append(f"table: {out / 'report.md'}")
    return said
