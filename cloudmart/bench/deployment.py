"""A deployment of the bench's own (``cloudmart bench --start``): the processes a pattern runs,
started and waited for until healthy, stopped after."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator

import httpx


@contextlib.contextmanager
def deployment(
    services: list[str],
    pattern: str,
    ports: dict[str, int],
    *,
    log_path: str,
    colocated: bool = False,
    health_timeout: float = 60.0,
) -> Iterator[None]:
    """Every service of ``pattern`` as ``cloudmart serve`` processes (as ``cloudmart up`` starts
    them), or all in one ``cloudmart up --colocated`` process, healthy on ``ports``, stopped
    on exit; their logs in ``log_path``.

    The database named by the environment must already have its tables (``cloudmart db init``).
    """
    from cloudmart.runner import start_colocated, start_services, stop_services

    with open(log_path, "ab") as log:
        if colocated:
            one = start_colocated(pattern, ports, output=log)
            procs = {name: one for name in services}
        else:
            procs = start_services(services, pattern, ports=ports, output=log)
        try:
            deadline = time.monotonic() + health_timeout
            for name in services:
                _wait_healthy(name, procs[name], ports[name], deadline, log_path)
            yield
        finally:
            stop_services({str(proc.pid): proc for proc in procs.values()})


def _wait_healthy(
    name: str, proc: subprocess.Popen[bytes], port: int, deadline: float, log_path: str
) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not healthy on port {port}; see {log_path}")
        time.sleep(0.1)
