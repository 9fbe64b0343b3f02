"""``cloudmart.costs``: CPU per process from ``/proc``, found by listening port; the floor's
ceiling built on it; the bench's clients lent one per saga, its status probe and its progress
line."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cloudmart import bench, costs, floor
from cloudmart.bench import load
from cloudmart.bench.tally import Tally

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")

TICKS = os.sysconf("SC_CLK_TCK")


def _fake_proc(tmp_path: Path, pid: int, utime: int, stime: int, name: str = "py (a) b") -> Path:
    """A ``/proc`` with one process whose name holds spaces and parentheses, and a machine."""
    (tmp_path / str(pid)).mkdir(exist_ok=True)
    rest = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(utime), str(stime)]
    (tmp_path / str(pid) / "stat").write_text(f"{pid} ({name}) {' '.join(rest)} 0 0 20 0\n")
    return tmp_path


def _machine(proc: Path, busy: int, idle: int) -> None:
    (proc / "stat").write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4\n")


def test_cpu_ms_reads_user_and_system_time_past_an_awkward_name(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, 42, utime=3 * TICKS, stime=TICKS)
    assert costs.cpu_ms(42, proc) == 4000.0
    assert costs.cpu_ms(43, proc) is None  # gone


def test_cpu_ms_of_this_process_grows_with_work() -> None:
    before = costs.cpu_ms(os.getpid())
    assert before is not None
    spin_until = time.process_time() + 0.05
    while time.process_time() < spin_until:
        pass
    after = costs.cpu_ms(os.getpid())
    assert after is not None and after - before >= 1000 / TICKS


def test_meter_reports_each_process_and_the_machine_busy_share(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, 1, utime=0, stime=0)
    _fake_proc(proc, 2, utime=TICKS, stime=0)
    _fake_proc(proc, 3, utime=0, stime=0)
    _machine(proc, busy=100, idle=100)
    meter = costs.Meter({"a": 1, "b": 2, "gone": 3}, proc=proc)
    meter.start()
    _fake_proc(proc, 1, utime=TICKS // 2, stime=TICKS // 2)
    _fake_proc(proc, 2, utime=TICKS, stime=TICKS)
    (proc / "3" / "stat").unlink()  # died during the run
    _machine(proc, busy=175, idle=125)
    used = meter.stop()
    assert used["ms"] == {"a": 1000.0, "b": 1000.0}
    assert used["busy"] == 0.75  # 75 of the 100 ticks that passed
    assert used["seconds"] >= 0


def test_per_unit_divides_by_the_work_done() -> None:
    used = {"ms": {"a": 300.0, "b": 100.0}, "busy": 0.5, "seconds": 1.0}
    assert costs.per_unit(used, 100) == {
        "ms": {"a": 3.0, "b": 1.0},
        "total_ms": 4.0,
        "busy": 0.5,
        "processes": ["a", "b"],
    }
    assert costs.per_unit(used, 0)["ms"] == {}


def test_listening_finds_the_process_behind_a_port() -> None:
    with socket.socket() as listener, socket.socket() as idle:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        idle.bind(("127.0.0.1", 0))  # bound, not listening: not a server
        port, other = listener.getsockname()[1], idle.getsockname()[1]
        assert costs.listening([port, other]) == {port: os.getpid()}
        assert costs.find({"me": port, "nobody": other, "unset": None}) == {"me": os.getpid()}


def test_local_port_only_for_servers_on_this_machine() -> None:
    assert costs.local_port("mysql+aiomysql://root@127.0.0.1:3306/x", 3306) == 3306
    assert costs.local_port("redis://localhost/0", 6379) == 6379
    assert costs.local_port("amqp://guest:guest@10.0.0.5:5672/", 5672) is None
    assert costs.local_port("sqlite+aiosqlite:///./cloudmart.db", 3306) is None
    assert costs.local_port(None, 1) is None


def test_counter_deltas_per_saga() -> None:
    before = {"Com_commit": 100, "Questions": 1000}
    after = {"Com_commit": 160, "Questions": 1450}
    assert costs.counter_deltas(before, after, 10) == {"Com_commit": 6.0, "Questions": 45.0}
    assert costs.counter_deltas(None, after, 10) is None
    assert costs.counter_deltas(before, after, 0) is None


async def test_database_counters_are_none_without_a_server(tmp_path: Path) -> None:
    from activities.db import create_engine

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        assert await costs.database_counters(engine) is None
    finally:
        await engine.dispose()


def _primitives(with_load: bool) -> dict[str, dict[str, Any]]:
    figures: dict[str, dict[str, Any]] = {
        "rabbitmq_round_trip": {"p50": 2.0, "p99": 5.0, "cpu": 2.0},
        "mariadb_commit": {"p50": 1.0, "p99": 3.0, "cpu": 1.0},
        "redis_stream_hop": {"p50": 0.5, "p99": 1.0, "cpu": 0.5},
    }
    for each in figures.values():
        cpu = each.pop("cpu")
        if with_load:
            each["load"] = {"cpu_ms_total": cpu, "per_second": 1000 / cpu, "concurrency": 32}
    return figures


def test_ceiling_is_the_cores_over_the_cpu_every_saga_needs() -> None:
    sagas = floor.saga_floors(_primitives(with_load=True), cores=2)
    orchestration, choreography = sagas["orchestration"], sagas["choreography"]
    # 5 round trips of 2 ms and 5 commits of 1 ms: 15 ms of CPU, 2 cores → 133.3/s at most.
    assert orchestration["ceiling"]["formula"] == "5 × rabbitmq_round_trip + 5 × mariadb_commit"
    assert orchestration["ceiling"]["cpu_ms"] == 15.0
    assert orchestration["ceiling"]["per_second"] == 133.3
    # 9 hops of 0.5 ms and 5 commits of 1 ms: 9.5 ms → 210.5/s.
    assert choreography["ceiling"]["cpu_ms"] == 9.5
    assert choreography["ceiling"]["per_second"] == 210.5
    # The floor (latency) is unchanged by the load figures.
    assert orchestration["p50_ms"] == 5 * 2.0 + 12 * 1.0
    shown = floor.report(
        {"samples": 1, "primitives": _primitives(True), "sagas": sagas, "machine": {"cores": 2}}
    )
    assert "at most 133.3 sagas/s on 2 cores" in shown


def test_no_ceiling_without_the_load_figures() -> None:
    sagas = floor.saga_floors(_primitives(with_load=False), cores=2)
    assert "ceiling" not in sagas["orchestration"] and "ceiling" not in sagas["choreography"]


async def test_clients_are_lent_one_per_saga_in_flight_and_reused() -> None:
    made: list[object] = []

    class Client:
        async def aclose(self) -> None:
            made.remove(self)

    def make() -> Any:
        made.append(Client())
        return made[-1]

    async with load._Clients(make) as clients:
        async with clients.lend() as first, clients.lend() as second:
            assert first is not second  # two sagas in flight: two connections
        async with clients.lend() as again:
            assert again in (first, second)  # no new client once one is free
        assert len(made) == 2
        await asyncio.sleep(0)
    assert made == []  # every client closed


async def test_the_probe_reads_the_latest_saga_without_waiting() -> None:
    asked: list[tuple[str, dict[str, Any]]] = []
    two = asyncio.Event()

    class Client:
        async def get(self, path: str, **kwargs: Any) -> None:
            asked.append((path, kwargs))
            if len(asked) >= 2:
                two.set()

        async def aclose(self) -> None:
            pass

    tally = Tally(order_ids=["first", "latest"])
    async with load._Clients(Client) as clients:  # type: ignore[arg-type]
        probe = asyncio.create_task(load._probe(clients, "orchestration", tally))
        async with asyncio.timeout(5):
            await two.wait()
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
    assert asked[:2] == [("/saga/latest/status", {})] * 2  # no wait: answered at once


def test_the_progress_line_is_redrawn_on_a_terminal_and_a_line_each_in_a_log() -> None:
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    tally = Tally(done=3, outcomes={"ok": Counter({"COMPLETED": 2, "error": 1})})
    log, terminal = io.StringIO(), Terminal()
    load._progress_line(tally, 10, log, end="\n")
    load._progress_line(tally, 10, terminal)
    assert log.getvalue() == "  3/10 sagas  completed 2  failed 0  errors 1\n"
    assert terminal.getvalue() == "\r  3/10 sagas  completed 2  failed 0  errors 1"


def test_services_are_looked_for_beside_the_url_given() -> None:
    assert bench.ports_beside("http://127.0.0.1:28005", "orchestrator") == {
        "order": 28001,
        "inventory": 28002,
        "payment": 28003,
        "shipping": 28004,
        "orchestrator": 28005,
    }
    assert bench.ports_beside("http://localhost:8001/", "order")["shipping"] == 8004
