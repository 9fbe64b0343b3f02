"""Real CloudMart processes for end-to-end and chaos tests.

:class:`Deployment` starts ``cloudmart serve NAME`` processes on ports of their own (so a
developer's running CloudMart is never touched), waits for ``/health``, and can kill
(SIGKILL), pause (SIGSTOP), resume and restart any of them. Each process logs to a file in
the deployment's directory, which a failing test can print.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PORT_OFFSETS = {"order": 1, "inventory": 2, "payment": 3, "shipping": 4, "orchestrator": 5}


@dataclass
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

    def port(self, name: str) -> int:
        return self.base_port + PORT_OFFSETS[name]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port(name)}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDMART_")}
        env.update(
            CLOUDMART_ENV="test",
            CLOUDMART_PATTERN=self.pattern,
            CLOUDMART_DATABASE_URL=self.database_url,
            CLOUDMART_NAMESPACE=self.namespace,
            CLOUDMART_DB_POOL_SIZE="5",
            CLOUDMART_DB_MAX_OVERFLOW="5",
            CLOUDMART_LOG_LEVEL="INFO",
            **({"CLOUDMART_RABBITMQ_URL": self.rabbitmq_url} if self.rabbitmq_url else {}),
            **({"CLOUDMART_REDIS_URL": self.redis_url} if self.redis_url else {}),
            **self.extra_env,
        )
        return env

    def start(self, name: str, *, wait: bool = True) -> subprocess.Popen[bytes]:
        log = (self.directory / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloudmart", "serve", name, "--port", str(self.port(name))],
            env=self.env(),
            cwd=self.directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes[name] = proc
        if wait:
            self.wait_healthy(name)
        return proc

    def wait_healthy(self, name: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        proc = self.processes[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            try:
                if httpx.get(f"{self.url(name)}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{name} not healthy within {timeout}s:\n{self.log(name)}")

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        proc = self.processes[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def pause(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.processes[name].send_signal(signal.SIGCONT)

    def restart(self, name: str) -> None:
        if self.processes[name].poll() is None:
            self.kill(name)
        self.start(name)

    def log(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def stop_all(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
