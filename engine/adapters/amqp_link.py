"""What both ends of the RabbitMQ request/reply share: one robust connection and the wire.

:class:`RobustLink` is the connection lifecycle of the engine's client
(:class:`~engine.adapters.rabbitmq.RabbitMQTransport`) and of a service's command server
(``services._kit.command_server``): connect, declare what the end needs (closing the
connection again if that fails), then follow aio-pika's robust reconnects with a flag that
says whether the end is usable. The flag drops as soon as the connection is lost and comes back
only after the robust channels restored their queues and consumers: aio-pika runs the
reconnect callbacks last, after the channels.

:class:`LinkEnd` is what both ends are to their users: started by ``await start()`` or
``async with``, closed by ``close()``, usable while ``connected``.

Messages are compact JSON objects, written by :func:`encode` and read by :func:`decode` through
orjson (the same JSON as the standard library's, several times faster, and a message body is
encoded and decoded on every hop); header values are read back as text (:func:`text`).
:data:`BROKER_ERRORS` is what a dropped connection or channel raises.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import aio_pika
import orjson
import structlog
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

__all__ = ["BROKER_ERRORS", "LinkEnd", "RobustLink", "decode", "encode", "text"]

logger = structlog.get_logger(__name__)

# What a dropped connection or channel raises from aio-pika/aiormq.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    AMQPError,
    ChannelInvalidStateError,
    ConnectionError,
)


def encode(data: dict[str, Any]) -> bytes:
    """``data`` as compact JSON (UTF-8); TypeError for what JSON cannot hold."""
    return orjson.dumps(data)


def decode(body: bytes) -> Any:
    """The JSON value of ``body``; ValueError when it is not JSON (or not UTF-8)."""
    return orjson.loads(body)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RobustLink:
    """One robust connection named ``name`` (the broker's management UI shows it), retried
    every ``reconnect_interval`` seconds while it is down.

    ``on_lost(exc)`` runs when the connection drops (the flag is already down), ``on_restored()``
    when it is back (the flag is up again). ``event`` prefixes the log lines (``transport``,
    ``command_server``); ``log_context`` is bound to them.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        reconnect_interval: float,
        event: str,
        log_context: dict[str, Any] | None = None,
        on_lost: Callable[[BaseException | None], None] | None = None,
        on_restored: Callable[[], None] | None = None,
    ) -> None:
        self._url = url
        self.name = name
        self._reconnect_interval = reconnect_interval
        self._event = event
        self._log = logger.bind(**(log_context or {}))
        self._on_lost = on_lost
        self._on_restored = on_restored
        self.connection: AbstractRobustConnection | None = None
        self._up = asyncio.Event()  # set exactly while usable

    async def open(self, setup: Callable[[AbstractRobustConnection], Awaitable[None]]) -> None:
        """Connect and run ``setup`` (declare, consume); the link is up once it returned."""
        connection = await aio_pika.connect_robust(
            self._url,
            client_properties={"connection_name": self.name},
            reconnect_interval=self._reconnect_interval,
        )
        try:
            await setup(connection)
        except BaseException:
            await connection.close()
            raise
        connection.close_callbacks.add(self._lost)
        connection.reconnect_callbacks.add(self._restored)
        self.connection = connection
        self._up.set()

    async def close(self) -> None:
        """Drop the link (no ``on_lost``: the end is closing on purpose)."""
        connection, self.connection = self.connection, None
        self._up.clear()
        if connection is not None:
            await connection.close()

    @property
    def up(self) -> bool:
        """Connected, and everything ``setup`` declared restored."""
        return self._up.is_set() and self.connection is not None

    async def wait_up(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for the link to be up; whether it is."""
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
        except TimeoutError:
            return False
        return self.up

    def _lost(self, _sender: Any, exc: BaseException | None = None) -> None:
        self._up.clear()
        if self.connection is None:
            return  # closed on purpose
        self._log.warning(f"{self._event}.connection_lost", error=repr(exc))
        if self._on_lost is not None:
            self._on_lost(exc)

    def _restored(self, _sender: Any) -> None:
        self._up.set()
        self._log.info(f"{self._event}.reconnected")
        if self._on_restored is not None:
            self._on_restored()


class LinkEnd(abc.ABC):
    """One end of the link over its :class:`RobustLink` (``_link``): ``async with`` starts and
    closes it."""

    _link: RobustLink

    @abc.abstractmethod
    async def start(self) -> None:
        """Open the link and declare what this end needs."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop this end and drop the link."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while connected to the broker and everything this end declared (its queue,
        its consumer) restored: requests are sent, commands consumed, a health check passes."""
        return self._link.up
