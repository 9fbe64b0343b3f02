"""A small TCP proxy that injects network faults between a client and a server.

``tc netem`` is not available here, so faults are made in user space: :class:`FaultProxy`
listens on ``127.0.0.1:listen_port`` and forwards every connection to ``target``. Its mode is
switched at run time, from any thread:

==================  ===========================================================================
``pass_through()``  bytes flow both ways at once
``delay(s)``        every chunk is held ``s`` seconds before it is forwarded (both directions,
                    order kept), as on a slow link
``blackhole()``     connections are accepted and read, but nothing is forwarded or answered:
                    the peer sees silence, as behind a dead route
``reset()``         every open connection is closed with a RST, and new ones are reset as soon
                    as they are accepted, as when a server or firewall drops them
==================  ===========================================================================

A connection that lost bytes to the black hole can never carry its protocol again, so when the
black hole heals (any other mode is chosen) such connections are reset; clients see a dropped
connection and reconnect, as after a real partition outlived their heartbeats.

The proxy runs its own event loop in a background thread, so sync and async tests alike can
drive it (``with FaultProxy(...) as proxy:`` or ``start()`` / ``stop()``); :attr:`stats` counts
what it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

_CHUNK = 65536


class Mode(enum.Enum):
    PASS = "pass"
    DELAY = "delay"
    BLACKHOLE = "blackhole"
    RESET = "reset"


@dataclasses.dataclass
class ProxyStats:
    """What the proxy saw since it started."""

    accepted: int = 0
    reset: int = 0
    bytes_forwarded: int = 0
    bytes_swallowed: int = 0


class _Link:
    """One proxied connection: the client side and the server side."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.broken = False  # bytes went into the black hole
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for writer in (self.client, self.server):
            if writer is not None:
                _abort(writer)
        for task in self.tasks:
            task.cancel()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a RST (SO_LINGER 0), not a FIN: the peer sees ``connection reset``."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Forward ``127.0.0.1:listen_port`` to ``target_host:target_port`` under a switchable fault.

    ``listen_port=0`` picks a free port (read :attr:`port`). Starts in ``pass`` mode.
    """

    def __init__(self, target_host: str, target_port: int, *, listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = listen_port
        self.stats = ProxyStats()
        self._mode = Mode.PASS
        self._delay = 0.0
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    # lifecycle ------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen (in a background thread with its own event loop); returns once listening."""
        if self._thread is not None:
            raise RuntimeError("the proxy is already running")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"fault-proxy-{self.port}", daemon=True
        )
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        """Close every connection and the listener; stop the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._call(self._shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @classmethod
    def in_front_of(cls, url: str, *, listen_port: int, default_port: int) -> FaultProxy:
        """A proxy (not started) to the server ``url`` names (``scheme://[login@]host[:port]``,
        ``default_port`` when it names none)."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or default_port
        return cls(host, port, listen_port=listen_port)

    def through(self, url: str) -> str:
        """``url`` (``scheme://[login@]host:port/...``) with this proxy in place of its host and
        port, so that a client configured with it connects through the proxy."""
        parts = urlsplit(url)
        login, _, _ = parts.netloc.rpartition("@")
        host = f"{self.address[0]}:{self.port}"
        return parts._replace(netloc=f"{login}@{host}" if login else host).geturl()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    # modes ------------------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    def pass_through(self) -> None:
        """Forward at once; connections broken by the black hole are reset."""
        self._call(self._switch(Mode.PASS, 0.0))

    def delay(self, seconds: float) -> None:
        """Hold every chunk ``seconds`` before forwarding it."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        self._call(self._switch(Mode.DELAY, seconds))

    def blackhole(self) -> None:
        """Accept and read, never forward nor answer."""
        self._call(self._switch(Mode.BLACKHOLE, 0.0))

    def reset(self) -> None:
        """Reset every open connection, and every new one as it arrives."""
        self._call(self._switch(Mode.RESET, 0.0))

    @property
    def open_connections(self) -> int:
        return len(self._links)

    # the event loop's side ---------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coroutine.close()
            raise RuntimeError("the proxy is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        self._links.clear()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _switch(self, mode: Mode, delay: float) -> None:
        self._mode, self._delay = mode, delay
        if mode is Mode.RESET:
            doomed = list(self._links)
        elif mode is Mode.BLACKHOLE:
            doomed = []
        else:
            doomed = [link for link in self._links if link.broken]
        for link in doomed:
            self._drop(link)

    def _drop(self, link: _Link) -> None:
        self.stats.reset += 1  # counted first: the peer may look as soon as it sees the RST
        self._links.discard(link)
        link.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        link = _Link(writer)
        if self._mode is Mode.RESET:
            self.stats.reset += 1
            _abort(writer)
            return
        self._links.add(link)
        server_reader: asyncio.StreamReader | None = None
        if self._mode is Mode.BLACKHOLE:
            link.broken = True
        else:
            try:
                server_reader, link.server = await asyncio.open_connection(*self.target)
            except OSError:
                self._drop(link)
                return
        link.tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        pumps = [asyncio.create_task(self._pump(link, reader, link.server))]
        if server_reader is not None:
            pumps.append(asyncio.create_task(self._pump(link, server_reader, writer)))
        link.tasks.extend(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            if link in self._links:
                self._links.discard(link)
                for side in (writer, link.server):
                    if side is not None:
                        side.close()

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | None,
    ) -> None:
        """Copy ``reader`` to ``writer`` under the current mode until either side closes."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send(link, queue, writer))
        try:
            while True:
                try:
                    chunk = await reader.read(_CHUNK)
                except OSError:
                    chunk = b""
                if not chunk:
                    queue.put_nowait(None)
                    await sender
                    return
                if self._mode is Mode.BLACKHOLE or writer is None:
                    link.broken = True
                    self.stats.bytes_swallowed += len(chunk)
                    continue
                release = time.monotonic() + (self._delay if self._mode is Mode.DELAY else 0.0)
                queue.put_nowait((release, chunk))
        finally:
            sender.cancel()

    async def _send(
        self,
        link: _Link,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter | None,
    ) -> None:
        while (item := await queue.get()) is not None:
            release, chunk = item
            wait = release - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # the injected latency itself
            if self._mode is Mode.BLACKHOLE or writer is None:
                link.broken = True
                self.stats.bytes_swallowed += len(chunk)
                continue
            try:
                writer.write(chunk)
                await writer.drain()
            except OSError:
                return
            self.stats.bytes_forwarded += len(chunk)
        if writer is not None:
            with contextlib.suppress(OSError):
                writer.write_eof()
