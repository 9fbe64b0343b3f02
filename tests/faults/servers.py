"""Private MariaDB, Redis and RabbitMQ servers that a test may stop, kill and restart.

The machine's shared servers are never touched: each :class:`OwnServer` runs from its own
data directory on its own port, as a child process in a process group of its own, and keeps
its log in that directory. ``start()`` waits until the server answers its protocol (or fails
the test past ``ready_timeout``); ``stop()`` is graceful (SIGTERM), ``kill()`` is SIGKILL (a crash), and
``restart(kill=...)`` brings it back on the same port and data directory, so durable data
written before is there again.

Binaries are found with :func:`shutil.which`, falling back to ``/usr/sbin`` and
``/usr/lib/rabbitmq/bin``; :func:`require` turns a missing one into a pytest skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from types import TracebackType

import pytest
from conftest import until_sync

_FALLBACK_DIRS = ("/usr/sbin", "/usr/bin", "/usr/lib/rabbitmq/bin")


def find_binary(name: str) -> str | None:
    """The path of executable ``name`` on PATH or in the usual system directories."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _FALLBACK_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def require(name: str) -> str:
    """The path of ``name``; skips the calling test when it is not installed."""
    path = find_binary(name)
    if path is None:
        pytest.skip(f"{name} is not installed: this scenario runs its own server")
    return path


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class OwnServer:
    """One private server process; subclasses say how to prepare, run and probe it."""

    name = "server"

    def __init__(self, directory: Path, port: int, *, ready_timeout: float = 60.0) -> None:
        self.directory = directory
        self.port = port
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        directory.mkdir(parents=True, exist_ok=True)

    # what a subclass provides ---------------------------------------------------------------

    def prepare(self) -> None:
        """One-time set-up of the data directory before the first start."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        """True once the server answers its own protocol."""
        raise NotImplementedError

    # lifecycle ---------------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.out"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it is ready; kill it if it is not by the deadline."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        if _port_open(self.port):
            raise RuntimeError(f"port {self.port} is taken: another {self.name} is running?")
        if self.starts == 0:
            self.prepare()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=self.environment(),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill() reaches its children
            )
        self.starts += 1
        try:
            self.wait_ready()
        except BaseException:
            self.kill()  # a server that is not ready within the deadline is not left behind
            raise

    def wait_ready(self) -> None:
        """Return once the server answers; fail with its log if it exits first or is not
        ready within ``ready_timeout``."""

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            return self.ready()

        until_sync(
            ready,
            timeout=self.ready_timeout,
            interval=0.1,
            what=f"{self.name} ready",
            describe=self.log_tail,
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop (SIGTERM to the group); SIGKILL if it outlives ``timeout``."""
        self._signal(signal.SIGTERM)
        try:
            self._wait_gone(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the server's whole process group: a crash, nothing flushed."""
        self._signal(signal.SIGKILL)
        self._wait_gone(15.0)

    def restart(self, *, kill: bool = True) -> None:
        """Kill (or stop) and start again on the same port and data directory."""
        if self.running:
            self.kill() if kill else self.stop()
        self.start()

    def _signal(self, signum: int) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return

    def _wait_gone(self, timeout: float) -> None:
        process = self.process
        if process is None:
            return
        process.wait(timeout=timeout)
        # the group's other members (erl_child_setup, epmd children...) go with the leader;
        # wait for the port to be free so a restart can bind it again
        until_sync(
            lambda: not _port_open(self.port),
            timeout=timeout,
            interval=0.05,
            what=f"{self.name}'s port {self.port} free",
        )

    def log_tail(self, size: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-size:] if self.log_path.exists() else ""

    def __enter__(self) -> OwnServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class OwnMariaDB(OwnServer):
    """``mariadbd`` on its own data directory (made by ``mariadb-install-db``) and port.

    No grant tables: any user, root included, connects without a password. The machine's
    option files are ignored (``--no-defaults``), so nothing of the shared server is used.
    """

    name = "mariadb"

    def __init__(self, directory: Path, port: int = 13306, **options: float) -> None:
        super().__init__(directory, port, **options)
        self.datadir = directory / "data"
        self.socket = directory / "mariadb.sock"
        self.mariadbd = require("mariadbd")
        self.install_db = require("mariadb-install-db")

    @property
    def url(self) -> str:
        """An async SQLAlchemy URL of the server, without a database."""
        return f"mysql+aiomysql://root@127.0.0.1:{self.port}/"

    def database_url(self, database: str) -> str:
        return f"mysql+aiomysql://root@127.0.0.1:{self.port}/{database}"

    def prepare(self) -> None:
        if (self.datadir / "mysql").is_dir():
            return
        subprocess.run(
            [
                self.install_db,
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def command(self) -> list[str]:
        return [
            self.mariadbd,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.directory / 'mariadb.pid'}",
            f"--log-error={self.directory / 'mariadb.err'}",
            "--user=root",
            "--skip-grant-tables",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=64M",
            "--max-connections=200",
        ]

    def ready(self) -> bool:
        import pymysql

        try:
            connection = pymysql.connect(
                host="127.0.0.1", port=self.port, user="root", connect_timeout=1
            )
        except pymysql.err.OperationalError:
            return False
        connection.close()
        return True

    def log_tail(self, size: int = 4000) -> str:
        err = self.directory / "mariadb.err"
        own = err.read_text(errors="replace")[-size:] if err.exists() else ""
        return super().log_tail(size) + own


class OwnRedis(OwnServer):
    """``redis-server`` with its own directory and port, AOF on and fsynced on every write,
    so a SIGKILL loses nothing that was acknowledged."""

    name = "redis"

    def __init__(self, directory: Path, port: int = 16379, **options: float) -> None:
        super().__init__(directory, port, **options)
        self.binary = require("redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                # +PONG once the AOF is loaded; -LOADING while it is
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


class OwnRabbitMQ(OwnServer):
    """A RabbitMQ node of its own: node name, AMQP and distribution ports, mnesia and log
    directories, config and (empty) plugins file, Erlang cookie — nothing shared with the
    machine's broker except the epmd name server, where it registers under its own name."""

    name = "rabbitmq"

    def __init__(
        self,
        directory: Path,
        port: int = 15673,
        *,
        dist_port: int = 25673,
        node: str = "cloudmart-chaos@localhost",
        **options: float,
    ) -> None:
        super().__init__(directory, port, **options)
        self.dist_port = dist_port
        self.node = node
        # the script in /usr/sbin re-runs itself as the rabbitmq user; the real one runs as is
        server = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
        self.binary = str(server) if server.is_file() else require("rabbitmq-server")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def prepare(self) -> None:
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (self.directory / "enabled_plugins").write_text("[].\n")
        (self.directory / "rabbitmq-env.conf").write_text("")
        cookie = self.directory / ".erlang.cookie"
        cookie.write_text("CLOUDMARTCHAOSCOOKIE")
        cookie.chmod(0o400)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.directory),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.directory / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.directory / "log"),
            RABBITMQ_CONFIG_FILE=str(self.directory / "rabbitmq.conf"),
            RABBITMQ_CONF_ENV_FILE=str(self.directory / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.directory / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.directory / "rabbitmq.pid"),
            RABBITMQ_LOGS="-",
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def command(self) -> list[str]:
        return [self.binary]

    def ready(self) -> bool:
        """The broker answers an AMQP 0-9-1 protocol header with ``connection.start``."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                frame = sock.recv(7)
        except OSError:
            return False
        # a method frame (type 1) on channel 0
        return len(frame) == 7 and frame[0] == 1 and frame[1:3] == b"\x00\x00"
