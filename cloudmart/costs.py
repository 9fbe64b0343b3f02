"""What a run costs the machine: CPU time per process, and the database's work.

The bench and the floor measure the same way, so their figures compare:

- **CPU**: ``utime + stime`` of each watched process from ``/proc/<pid>/stat``, before and after,
  and the whole machine's busy share from ``/proc/stat`` (1.0 is every core busy all the time).
  Processes are found by the TCP port they listen on (a service, MariaDB, RabbitMQ, Redis), so
  only processes on this machine can be watched; a port nobody here listens on is left out.
- **Database**: the server's own counters (``SHOW GLOBAL STATUS``: commits, statements), which
  count every client's work, MariaDB and MySQL only.

Linux only (``/proc``); elsewhere nothing is watched and the figures are empty.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

PROC = Path("/proc")
LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
_LISTEN = "0A"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
DATABASE_COUNTERS = ("Com_commit", "Questions")
"""``SHOW GLOBAL STATUS`` counters read around a run: commits, and statements of any kind."""


def cpu_ms(pid: int, proc: Path = PROC) -> float | None:
    """CPU time (user + system, ms) ``pid`` has used so far; ``None`` when it is gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / _TICKS


def machine_ticks(proc: Path = PROC) -> tuple[int, int]:
    """``(busy, total)`` clock ticks of every core since boot (``/proc/stat``)."""
    values = [int(v) for v in (proc / "stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user
    return total - idle, total


def listening(ports: Iterable[int], proc: Path = PROC) -> dict[int, int]:
    """``{port: pid}`` of the processes on this machine listening on ``ports`` over TCP."""
    wanted = set(ports)
    inodes: dict[str, int] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            port = int(parts[1].rsplit(":", 1)[1], 16)
            if parts[3] == _LISTEN and port in wanted:
                inodes[f"socket:[{parts[9]}]"] = port
    found: dict[int, int] = {}
    if not inodes:
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:  # closed since it was listed
                continue
            if link in inodes:
                found.setdefault(inodes[link], int(entry.name))
    return found


def local_port(url: str | None, default: int) -> int | None:
    """The port of ``url`` when it names a server on this machine, else ``None`` (a file
    database has no server)."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        return None
    return parts.port or default


def find(ports: Mapping[str, int | None], proc: Path = PROC) -> dict[str, int]:
    """``{name: pid}`` for each named port something on this machine listens on."""
    wanted = {name: port for name, port in ports.items() if port is not None}
    pids = listening(wanted.values(), proc)
    return {name: pids[port] for name, port in wanted.items() if port in pids}


@dataclass
class Meter:
    """CPU used by ``processes`` (``{name: pid}``) and by the whole machine between
    :meth:`start` and :meth:`stop`."""

    processes: dict[str, int]
    proc: Path = PROC
    _before: dict[str, float] = field(default_factory=dict)
    _ticks: tuple[int, int] = (0, 0)
    _began: float = 0.0

    def start(self) -> None:
        self._before = {
            name: used
            for name, pid in self.processes.items()
            if (used := cpu_ms(pid, self.proc)) is not None
        }
        self._ticks = machine_ticks(self.proc)
        self._began = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        """``{"ms": {name: CPU ms}, "busy": share of all cores busy, "seconds": wall}``.

        A process that died during the run is left out of ``ms``.
        """
        used: dict[str, float] = {}
        for name, before in self._before.items():
            after = cpu_ms(self.processes[name], self.proc)
            if after is not None:
                used[name] = round(after - before, 1)
        busy, total = machine_ticks(self.proc)
        spent = total - self._ticks[1]
        return {
            "ms": used,
            "busy": round((busy - self._ticks[0]) / spent, 3) if spent > 0 else None,
            "seconds": round(time.perf_counter() - self._began, 3),
        }


def per_unit(measured: Mapping[str, Any], units: int) -> dict[str, Any]:
    """A :meth:`Meter.stop` result per unit of work (a saga, an operation): CPU ms each, their
    total, and the machine's busy share."""
    each = {name: round(ms / units, 3) for name, ms in measured["ms"].items()} if units else {}
    return {
        "ms": each,
        "total_ms": round(sum(each.values()), 3),
        "busy": measured["busy"],
        "processes": sorted(measured["ms"]),
    }


async def database_counters(engine: AsyncEngine) -> dict[str, int] | None:
    """:data:`DATABASE_COUNTERS` now; ``None`` on a database without them (SQLite)."""
    if engine.dialect.name not in ("mysql", "mariadb"):
        return None
    names = ", ".join(f"'{name}'" for name in DATABASE_COUNTERS)
    async with engine.connect() as conn:
        rows = await conn.execute(sa.text(f"SHOW GLOBAL STATUS WHERE Variable_name IN ({names})"))
        return {str(name): int(value) for name, value in rows}


def counter_deltas(
    before: Mapping[str, int] | None, after: Mapping[str, int] | None, units: int
) -> dict[str, float] | None:
    """Each counter's growth per unit, ``None`` when either side is missing."""
    if before is None or after is None or not units:
        return None
    return {name: round((after[name] - before[name]) / units, 2) for name in before}
