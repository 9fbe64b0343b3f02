"""``cloudmart bench``: real sagas through the public REST API of a running deployment.

Modules: :mod:`~cloudmart.bench.load` (the run), :mod:`~cloudmart.bench.tally` (what it
counts and the result it adds up to), :mod:`~cloudmart.bench.mix` (the failure
mix and order bodies), :mod:`~cloudmart.bench.catalogue` (the bench's catalogue),
:mod:`~cloudmart.bench.figures` (the result and its statistics),
:mod:`~cloudmart.bench.output` (text and JSON), :mod:`~cloudmart.bench.where` (machine and
versions), :mod:`~cloudmart.bench.deployment` (``--start``), :mod:`~cloudmart.bench.preload`
(``--preload``: a history of finished sagas written in bulk before the run).

Two ways to load it:

- **closed loop** (``concurrency``): that many workers each start a saga (``POST /saga/start``
  on the orchestrator, or ``POST /orders`` on the order service in the choreography), wait for
  its end with a long-poll, and start the next, until ``sagas`` have run;
- **open loop** (``rate``): saga *i* starts at ``i / rate`` seconds whatever the others do, so a
  system that falls behind shows it as growing latency, measured from the moment each saga was
  due to start (no coordinated omission).

A ``mix`` makes a share of the orders fail at a chosen step (SPEC §4): ``stock`` orders a book
the bench keeps at zero stock, ``payment`` charges a bench customer whose balance is zero,
``shipping`` ships to ``US`` (not served). The bench adds its own catalogue (ids from 900001)
through the database, so every other saga can complete.

Reported: sagas per second, start→terminal latency percentiles (and the 1..100 quantiles, for
CDFs), REST response times, errors (a non-2xx answer, or a saga not terminal), and, when the
deployment's database is given, the verdict of :mod:`cloudmart.check` (snapshot before, check
after) with the rollback success: FAILED sagas left with no effect over all FAILED sagas.

REST response time is over the requests that answer at once: the start requests, and a status
read (no ``wait``) of the latest saga started, sent :data:`PROBE_PER_SECOND` times a second
while the load runs. The clients' long-polls wait for the saga by design, so they are reported
apart (``long_poll_ms``), not as response times.

What the run cost (:mod:`cloudmart.costs`): CPU ms per ended saga of each watched process (the
services, the servers and the bench itself, found by the ports they listen on, on this
machine) with the machine's busy share, and the database's commits and statements per saga.

The results also record the machine, the versions of the parts, the settings used and, given a
floor (a ``cloudmart bench floor`` file, or one measured just before the run), the floor, the
latency as a multiple of it; the report also gives the throughput as a share of the floor's
ceiling when the floor was measured under load.
"""

from __future__ import annotations

from cloudmart.bench.catalogue import seed_catalogue
from cloudmart.bench.deployment import deployment
from cloudmart.bench.figures import (
    BenchResult,
    ceiling_per_second,
    floor_ms,
    percentiles,
    quantile,
    quantiles,
    rollback_success,
)
from cloudmart.bench.load import PROBE_PER_SECOND, run
from cloudmart.bench.mix import (
    ADDRESS,
    BENCH,
    BENCH_BOOKS,
    BENCH_CUSTOMER,
    BROKE_CUSTOMER,
    FAILURES,
    HISTORY,
    SOLD_OUT_BOOK,
    Catalogue,
    order_body,
    parse_mix,
    plan,
)
from cloudmart.bench.output import ports_beside, report, to_json, watched
from cloudmart.bench.tally import TERMINAL
from cloudmart.bench.where import database_version, machine

__all__ = [
    "ADDRESS",
    "BENCH",
    "BENCH_BOOKS",
    "BENCH_CUSTOMER",
    "BROKE_CUSTOMER",
    "FAILURES",
    "HISTORY",
    "PROBE_PER_SECOND",
    "SOLD_OUT_BOOK",
    "TERMINAL",
    "BenchResult",
    "Catalogue",
    "ceiling_per_second",
    "database_version",
    "deployment",
    "floor_ms",
    "machine",
    "order_body",
    "parse_mix",
    "percentiles",
    "plan",
    "ports_beside",
    "quantile",
    "quantiles",
    "report",
    "rollback_success",
    "run",
    "seed_catalogue",
    "to_json",
    "watched",
]
