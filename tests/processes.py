"""Real CloudMart processes for end-to-end and chaos tests.

:class:`Deployment` starts ``cloudmart serve NAME`` processes on ports of their own (so a
developer's running CloudMart is never touched), waits for ``/health``, and can kill
(SIGKILL), pause (SIGSTOP), resume and restart any of them. Each process logs to a file in
the deployment's directory, which a failing test can print.

A process name is a service (``orchestrator``) or a service and a replica number
(``orchestrator-2``: the same service on its own port, ``base_port + offset + 10 * (n - 1)``).

No process outlives the test run: each one leads a session (and process group) of its own,
its pid is appended to ``pids`` in the deployment's directory, and :meth:`Deployment.stop_all`
— also run at interpreter exit for any deployment not stopped — ends every group it started.
A SIGTERM to the test run is taken as Ctrl-C, so fixtures and that exit hook still run (only
a SIGKILL of the test run itself leaves its processes behind, listed in ``pids``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from conftest import TEST_RABBITMQ_URL, TEST_REDIS_URL, answers_200, fresh_database, until_sync

PORT_OFFSETS = {"order": 1, "inventory": 2, "payment": 3, "shipping": 4, "orchestrator": 5}
_live: weakref.WeakSet[Deployment] = weakref.WeakSet()
_MAX_REPLICAS = 3  # the most replicas of one service a test starts (orchestrator-3)


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out as a client connection's local port."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


_EPHEMERAL_LOW = _ephemeral_low()


def service_of(name: str) -> tuple[str, int]:
    """``"orchestrator-2"`` → ``("orchestrator", 2)``; ``"payment"`` → ``("payment", 1)``."""
    service, _, replica = name.partition("-")
    return service, int(replica) if replica else 1


@dataclass(eq=False)
class Deployment:
    database_url: str
    namespace: str
    directory: Path
    base_port: int = 18000
    pattern: str = "orchestration"
    rabbitmq_url: str | None = None
    redis_url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        # A port of the kernel's ephemeral range may be any client connection's local port at
        # the moment a service binds it ("address already in use"): deployments stay below.
        highest = self.base_port + max(PORT_OFFSETS.values()) + 10 * (_MAX_REPLICAS - 1)
        assert highest < _EPHEMERAL_LOW, (
            f"ports {self.base_port}..{highest} reach the ephemeral range from {_EPHEMERAL_LOW}"
        )
        _live.add(self)

    def port(self, name: str) -> int:
        service, replica = service_of(name)
        return self.base_port + PORT_OFFSETS[service] + 10 * (replica - 1)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port(name)}"

    @property
    def entry(self) -> str:
        """The process a client starts sagas at: the orchestrator, or in the choreography the
        order service."""
        return "orchestrator" if self.pattern == "orchestration" else "order"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDMART_")}
        env.update(
            CLOUDMART_ENV="test",
            CLOUDMART_PATTERN=self.pattern,
            CLOUDMART_DATABASE_URL=self.database_url,
            CLOUDMART_NAMESPACE=self.namespace,
            CLOUDMART_DB_POOL_SIZE="10",
            CLOUDMART_DB_MAX_OVERFLOW="0",
            CLOUDMART_LOG_LEVEL="INFO",
            **({"CLOUDMART_RABBITMQ_URL": self.rabbitmq_url} if self.rabbitmq_url else {}),
            **({"CLOUDMART_REDIS_URL": self.redis_url} if self.redis_url else {}),
        )
        env.update(self.extra_env)  # may override the defaults above (CLOUDMART_ENV=prod)
        return env

    def cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``cloudmart ARGS`` run to its end against this deployment (its environment plus
        ``env``, in its directory); a non-zero exit fails the test with what it printed."""
        done = subprocess.run(
            [sys.executable, "-m", "cloudmart", *args],
            env={**self.env(), **env},
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def start(
        self, name: str, *, wait: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start process ``name``; ``env`` adds variables for this start only."""
        service, _ = service_of(name)
        with (self.directory / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cloudmart",
                    "serve",
                    service,
                    "--port",
                    str(self.port(name)),
                ],
                env={**self.env(), **(env or {})},
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop_all ends all of it
            )
        self.started.append(proc)
        with (self.directory / "pids").open("a") as pids:
            pids.write(f"{proc.pid} {name}\n")
        self.processes[name] = proc
        if wait:
            self.wait_healthy(name)
        return proc

    def wait_healthy(self, name: str, timeout: float = 30.0) -> None:
        """Return once ``name`` answers ``/health``; fail with its log if it exits first or
        is not healthy within ``timeout``."""
        proc = self.processes[name]

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            return answers_200(f"{self.url(name)}/health")

        until_sync(
            healthy,
            timeout=timeout,
            interval=0.05,
            what=f"{name} healthy",
            describe=lambda: self.log(name),
        )

    def alive(self, name: str) -> bool:
        proc = self.processes.get(name)
        return proc is not None and proc.poll() is None

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        proc = self.processes[name]
        _signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=10)

    def pause(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGCONT)

    def restart(
        self, name: str, *, wait: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        if self.processes[name].poll() is None:
            self.kill(name)
        else:
            self.processes[name].wait()
        return self.start(name, wait=wait, env=env)

    def log(self, name: str, *, tail: int | None = 6000) -> str:
        """The last ``tail`` characters of the process's log (all of it with None)."""
        path = self.directory / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text if tail is None else text[-tail:]

    def stop_all(self) -> None:
        """Stop every process this deployment started (SIGTERM, then SIGKILL), whole groups."""
        _live.discard(self)
        for proc in self.started:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGCONT)
                _signal_group(proc, signal.SIGTERM)
        for proc in self.started:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    # The process leads its own group (start_new_session), so its pid is the group id; while
    # it is not reaped (poll() is None) that id cannot name anyone else's group.
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)


@atexit.register
def _stop_forgotten() -> None:
    for deployment in list(_live):
        deployment.stop_all()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if threading.current_thread() is threading.main_thread() and (
    signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
):
    signal.signal(signal.SIGTERM, _interrupt)


SERVICES_OF = {
    "orchestration": ("order", "inventory", "payment", "shipping", "orchestrator"),
    "choreography": ("order", "inventory", "payment", "shipping"),
}


@contextlib.contextmanager
def deployed(
    pattern: str,
    database: str,
    directory: Path,
    *,
    base_port: int,
    namespace: str | None = None,
    **env: str,
) -> Iterator[Deployment]:
    """Every process of ``pattern``, started and healthy, on a fresh database ``database``
    (schema created) and a broker namespace of their own (RabbitMQ for the orchestration, Redis
    for the choreography), cleaned before (what a crashed run left) and after."""
    from rabbitmq_support import delete_topology

    services = SERVICES_OF[pattern]
    namespace = namespace or f"test-{uuid.uuid4().hex[:8]}"

    def clean() -> None:
        if pattern == "orchestration":
            asyncio.run(delete_topology(TEST_RABBITMQ_URL, namespace, services[:-1]))
        else:
            delete_redis_namespace(TEST_REDIS_URL, namespace)

    url = fresh_database(database)
    clean()
    deployment = Deployment(
        database_url=url,
        namespace=namespace,
        directory=directory,
        base_port=base_port,
        pattern=pattern,
        rabbitmq_url=TEST_RABBITMQ_URL if pattern == "orchestration" else None,
        redis_url=TEST_REDIS_URL if pattern == "choreography" else None,
        extra_env=env,
    )
    try:
        for name in services:  # all start at once, then each is waited for
            deployment.start(name, wait=False)
        for name in services:
            deployment.wait_healthy(name)
        yield deployment
    finally:
        deployment.stop_all()
        clean()


def delete_redis_namespace(url: str, namespace: str) -> None:
    """Delete every Redis key of ``namespace`` (its streams and dead letters)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
