"""RabbitMQ request/reply: the engine's :class:`~engine.ports.Transport` and its service side.

Client, :class:`RabbitMQTransport`: one robust connection and one channel with publisher
confirms. A request is a transient JSON message on the durable direct exchange
``<ns>.commands``, routing key = service, published ``mandatory`` (an unknown service fails at
once instead of timing out), with a fresh ``correlation_id``, the headers ``idempotency_key``,
``method`` and the caller's own (``saga_id``...), and ``reply_to`` = the transport's exclusive
reply queue ``<ns>.replies.<instance>``. A named queue rather than direct reply-to: the robust
channel re-declares it under the same name after a reconnect, it carries the namespace like
every other name, and FLOOR.md measured both at the same cost.

Why transient: the durable record of a command is the saga's history, not the message (as in
Temporal, whose activity tasks are re-created from history, not kept by the queue). A broker
that restarts takes the requester's exclusive reply queue with it, so every request in flight
fails with ``TransportError`` and the engine re-sends it with the same idempotency key after
the reconnect; a persistent copy of the command would only run a second time against the
inbox. What persistence did cost was a message-store write per command in the broker: about
2 ms of RabbitMQ's CPU per saga of five commands (README, Performance). A consumer that dies
holding a transient command gets it redelivered like any other, and the confirm still tells
that the broker routed it.

===========================================  =================================================
what happened                                what ``request`` raises
===========================================  =================================================
error reply ``{"error": wire}``              :class:`~engine.errors.RemoteError` (``from_wire``)
no reply within ``timeout``                  :class:`~engine.errors.StepTimeout`; a late reply
                                             is dropped, logged and counted
unroutable, nacked, broker unreachable,      :class:`~engine.errors.TransportError`; the
connection lost while waiting                command may have run: the engine re-sends it
                                             with the same idempotency key
===========================================  =================================================

A request made while the connection is down first waits, within its timeout, for the robust
connection to come back; it fails with ``TransportError`` ("not sent") only if it does not.

Server, :class:`RabbitMQCommandServer`: consumes ``<ns>.<service>.commands`` (durable, bound with
the service's routing key, dead-lettering to ``<ns>.dlx`` → ``<ns>.<service>.dead``) with a bounded
prefetch and manual acks. Per message: decode (malformed → dead-letter at once), call
``handler(method, payload, headers)``, publish the reply and only then ack, so a command is acked
only after its activity committed. Replies go unconfirmed, on a channel of their own (the command
channel while that one is down after a reconnect): they live in the requester's exclusive queue,
which no confirm makes durable. An exception with ``to_wire()`` (a ``DomainError`` or
``SagaError``) is an answer: error reply + ack. Any other exception (the database is down...) is a
failed delivery: the command goes back to the queue until it has been delivered ``max_deliveries``
times, then to the dead-letter queue.

Counting deliveries: classic queues keep no count (``x-delivery-limit`` needs a quorum queue,
about 1 ms more per round trip on this machine, FLOOR.md). A failed delivery is therefore
re-published to the tail of the queue (persistent, confirmed) with the header
``x-cloudmart-deliveries`` incremented, and the original acked; a message that arrives with
``redelivered`` set (its consumer died holding it) is counted the same way before it runs
again, so even a command that kills its consumer stops after ``max_deliveries``. Re-publishing
to the tail instead of requeueing at the head also lets other commands flow past a poison one,
and a short growing back-off (``retry_backoff``) keeps a database blip from burning all the
deliveries in a millisecond.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ConsumerTag,
)
from aio_pika.exceptions import AMQPError, ChannelInvalidStateError, DeliveryError, PublishError

from engine.adapters import amqp_names as names
from engine.errors import RemoteError, StepTimeout, TransportError

__all__ = [
    "CommandHandler",
    "CommandServerStats",
    "RabbitMQCommandServer",
    "RabbitMQTransport",
    "TransportStats",
]

CommandHandler = Callable[[str, dict[str, Any], dict[str, str]], Awaitable[dict[str, Any]]]

logger = structlog.get_logger(__name__)

# What a dropped connection or channel raises from aio-pika/aiormq.
_BROKER_ERRORS: tuple[type[BaseException], ...] = (
    AMQPError,
    ChannelInvalidStateError,
    ConnectionError,
)
# Headers rebound into the log context on receipt (STYLE.md, Logging).
_LOG_HEADERS = ("saga_id", "workflow_id", "order_id", "step", "attempt")
# Headers a reply carries back from its command, so both ends log the same ids.
_REPLY_HEADERS = ("saga_id", "workflow_id", "order_id")


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclasses.dataclass
class TransportStats:
    """Counters of one :class:`RabbitMQTransport`, read by metrics."""

    requests: int = 0
    replies: int = 0
    remote_errors: int = 0
    timeouts: int = 0
    transport_errors: int = 0
    unmatched_replies: int = 0
    reconnects: int = 0


class RabbitMQTransport:
    """The engine's :class:`~engine.ports.Transport` over RabbitMQ request/reply.

    ``prefetch`` bounds the replies the broker pushes before they are acked;
    ``reconnect_interval`` is the pause between reconnect attempts. Start it with
    ``await start()`` (or ``async with``); ``close()`` fails every pending request with
    ``TransportError``.
    """

    def __init__(
        self, url: str, *, namespace: str, prefetch: int = 64, reconnect_interval: float = 1.0
    ) -> None:
        self._url = url
        self._reconnect_interval = reconnect_interval
        self.namespace = namespace
        self._prefetch = prefetch
        self.instance = uuid.uuid4().hex[:12]
        self.reply_queue = names.reply_queue(namespace, self.instance)
        self.connection_name = f"{namespace}.client.{self.instance}"
        self.stats = TransportStats()
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # Up and with its reply queue consumed: cleared on a connection loss, set again only
        # after the robust channel re-declared the reply queue (reconnect callbacks run last).
        self._ready = False
        self._up = asyncio.Event()  # set exactly while _ready: requests wait on it

    async def __aenter__(self) -> RabbitMQTransport:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        connection = await aio_pika.connect_robust(
            self._url,
            client_properties={"connection_name": self.connection_name},
            reconnect_interval=self._reconnect_interval,
        )
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await channel.set_qos(prefetch_count=self._prefetch)
            self._exchange = await channel.declare_exchange(
                names.commands_exchange(self.namespace), aio_pika.ExchangeType.DIRECT, durable=True
            )
            # Exclusive: deleted with the connection; the robust channel re-declares it (same
            # name) and re-consumes after a reconnect. Consumed without acks: a reply lives
            # only as long as this connection whether it is acked or not, so an ack per reply
            # would be a frame each way for nothing.
            queue = await channel.declare_queue(self.reply_queue, exclusive=True, auto_delete=True)
            await queue.consume(self._on_reply, no_ack=True)
        except BaseException:
            await connection.close()
            raise
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        self._connection = connection
        self._ready = True
        self._up.set()
        logger.info("transport.started", reply_queue=self.reply_queue)

    async def close(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        self._ready = False
        self._up.clear()
        self._fail_pending("transport closed")
        if connection is not None:
            await connection.close()

    @property
    def connected(self) -> bool:
        """True while the connection to the broker is up and the reply queue consumed."""
        return self._ready and self._connection is not None

    async def request(
        self,
        service: str,
        method: str,
        payload: dict[str, Any],
        *,
        timeout: float,
        idempotency_key: str,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Send ``method`` to ``service`` and wait for its reply (see the module docstring)."""
        exchange = self._exchange
        if exchange is None:
            raise RuntimeError("RabbitMQTransport.start() has not been awaited")
        correlation_id = uuid.uuid4().hex
        log = logger.bind(
            service=service,
            method=method,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id,
        )
        self.stats.requests += 1
        deadline = asyncio.get_running_loop().time() + timeout
        if not self.connected:
            # The robust connection comes back by itself (a broker restart, a dropped link):
            # wait for it within this request's timeout instead of failing at once, so an
            # outage shorter than the step's retries costs time, not the saga.
            await self._wait_connected(timeout)
        if not self.connected:
            self.stats.transport_errors += 1
            raise TransportError(f"RabbitMQ unreachable: {service}.{method} not sent")
        message = aio_pika.Message(
            _encode(payload),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,  # see the module docstring
            correlation_id=correlation_id,
            reply_to=self.reply_queue,
            message_id=idempotency_key,
            headers={
                **(headers or {}),
                names.IDEMPOTENCY_KEY_HEADER: idempotency_key,
                names.METHOD_HEADER: method,
            },
        )
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            async with asyncio.timeout_at(deadline):
                await self._publish(exchange, message, service, method)
                return await future
        except TimeoutError:
            self.stats.timeouts += 1
            log.warning("request.timeout", timeout=timeout)
            raise StepTimeout(f"no reply from {service}.{method} within {timeout}s") from None
        except TransportError as exc:
            self.stats.transport_errors += 1
            log.warning("request.transport_error", error=str(exc))
            raise
        except RemoteError:
            self.stats.remote_errors += 1
            raise
        finally:
            del self._pending[correlation_id]
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a failure set while publishing is not "lost"

    async def _wait_connected(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._up.wait()
        except TimeoutError:
            logger.info("request.broker_still_unreachable", waited=timeout)

    async def _publish(
        self, exchange: AbstractExchange, message: aio_pika.Message, service: str, method: str
    ) -> None:
        try:
            await exchange.publish(message, routing_key=service, mandatory=True)
        except PublishError as exc:
            raise TransportError(f"no queue for service {service!r}: message returned") from exc
        except DeliveryError as exc:
            raise TransportError(f"broker refused {service}.{method} (nack)") from exc
        except _BROKER_ERRORS as exc:
            raise TransportError(f"could not publish {service}.{method}: {exc!r}") from exc

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        self._resolve(message)

    def _resolve(self, message: AbstractIncomingMessage) -> None:
        correlation_id = message.correlation_id or ""
        future = self._pending.get(correlation_id)
        if future is None or future.done():
            self.stats.unmatched_replies += 1
            logger.warning("reply.unmatched", correlation_id=correlation_id)
            return
        self.stats.replies += 1
        try:
            body = json.loads(message.body)
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            future.set_exception(RemoteError.from_wire(body["error"]))
        elif isinstance(body, dict) and isinstance(body.get("ok"), dict):
            future.set_result(body["ok"])
        else:
            logger.error("reply.malformed", correlation_id=correlation_id)
            future.set_exception(TransportError("malformed reply"))

    def _on_connection_lost(self, _sender: Any, exc: BaseException | None = None) -> None:
        self._ready = False
        self._up.clear()
        if self._connection is not None:
            logger.warning("transport.connection_lost", error=repr(exc), pending=len(self._pending))
        self._fail_pending("connection to RabbitMQ lost while waiting for the reply")

    def _on_reconnected(self, _sender: Any) -> None:
        self._ready = True
        self._up.set()
        self.stats.reconnects += 1
        logger.info("transport.reconnected", reply_queue=self.reply_queue)

    def _fail_pending(self, reason: str) -> None:
        # The replies of these requests were bound to the lost connection's exclusive queue:
        # they can never arrive. The commands may still run; the caller re-sends with the key.
        for future in self._pending.values():
            if not future.done():
                future.set_exception(TransportError(f"{reason}; the command may have run"))


@dataclasses.dataclass
class CommandServerStats:
    """Counters of one :class:`RabbitMQCommandServer`, read by metrics.

    ``processed``: answered ``ok``; ``errors``: answered with a business error; ``failures``:
    deliveries whose handler raised something else; ``retried``: of those, sent round again;
    ``dead_lettered``: sent to the dead-letter queue (``malformed`` ones included);
    ``reconnects``: connections restored after a loss.
    """

    processed: int = 0
    errors: int = 0
    failures: int = 0
    retried: int = 0
    dead_lettered: int = 0
    malformed: int = 0
    reconnects: int = 0


class RabbitMQCommandServer:
    """Serve one service's commands from RabbitMQ (see the module docstring).

    ``handler(method, payload, headers)`` returns the reply payload; ``headers`` holds the
    message's string headers, ``idempotency_key`` and ``method`` among them.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        service: str,
        handler: CommandHandler,
        prefetch: int = 32,
        max_deliveries: int = 5,
        retry_backoff: float = 0.1,
        retry_backoff_max: float = 5.0,
        reconnect_interval: float = 1.0,
    ) -> None:
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        self._url = url
        self.namespace = namespace
        self.service = service
        self._handler = handler
        self._prefetch = prefetch
        self.max_deliveries = max_deliveries
        self._retry_backoff = retry_backoff
        self._retry_backoff_max = retry_backoff_max
        self._reconnect_interval = reconnect_interval
        self.queue_name = names.command_queue(namespace, service)
        self.dead_letter_queue = names.dead_letter_queue(namespace, service)
        self.connection_name = f"{namespace}.{service}.server.{uuid.uuid4().hex[:8]}"
        self.stats = CommandServerStats()
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._replies: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: ConsumerTag | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._ready = False  # connected and consuming; see RabbitMQTransport._ready

    async def __aenter__(self) -> RabbitMQCommandServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        connection = await aio_pika.connect_robust(
            self._url,
            client_properties={"connection_name": self.connection_name},
            reconnect_interval=self._reconnect_interval,
        )
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=self._prefetch)
            # Replies go unconfirmed, on a channel of their own: the reply queue is exclusive
            # to the requester's connection, so a reply is never durable anyway, and a lost one
            # costs a re-send with the same key. A confirm would be one more frame per command
            # and a broker round trip before the ack.
            replies = await connection.channel(publisher_confirms=False)
            commands = await channel.declare_exchange(
                names.commands_exchange(self.namespace), aio_pika.ExchangeType.DIRECT, durable=True
            )
            dlx_name = names.dead_letter_exchange(self.namespace)
            dlx = await channel.declare_exchange(
                dlx_name, aio_pika.ExchangeType.DIRECT, durable=True
            )
            dead = await channel.declare_queue(self.dead_letter_queue, durable=True)
            await dead.bind(dlx, routing_key=self.service)
            queue = await channel.declare_queue(
                self.queue_name,
                durable=True,
                arguments={
                    "x-dead-letter-exchange": dlx_name,
                    # Re-published copies arrive by queue name: dead-letter them by service.
                    "x-dead-letter-routing-key": self.service,
                },
            )
            await queue.bind(commands, routing_key=self.service)
            self._consumer_tag = await queue.consume(self._on_message)
        except BaseException:
            await connection.close()
            raise
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        self._connection, self._channel, self._queue = connection, channel, queue
        self._replies = replies
        self._ready = True
        logger.info("command_server.started", service=self.service, queue=self.queue_name)

    async def close(self, *, drain_timeout: float = 10.0) -> None:
        """Stop consuming, let in-flight commands finish for ``drain_timeout`` s, disconnect.

        Commands still running after that are cancelled; unacked, they go back to the queue.
        """
        connection, queue, tag = self._connection, self._queue, self._consumer_tag
        self._connection = self._channel = self._queue = self._consumer_tag = None
        self._replies = None
        self._ready = False
        if connection is None:
            return
        if queue is not None and tag is not None:
            try:
                await queue.cancel(tag)
            except _BROKER_ERRORS as exc:  # already disconnected: nothing left to cancel
                logger.info("command_server.cancel_failed", error=repr(exc))
        inflight = set(self._inflight)
        if inflight and drain_timeout > 0:
            await asyncio.wait(inflight, timeout=drain_timeout)
        for task in inflight:
            task.cancel()
        await connection.close()
        await asyncio.gather(*inflight, return_exceptions=True)
        logger.info("command_server.closed", service=self.service)

    @property
    def connected(self) -> bool:
        """True while connected to the broker and consuming (a health check reads it)."""
        return self._ready and self._connection is not None

    async def queue_depths(self) -> dict[str, int]:
        """Messages waiting in the command queue and in the dead-letter queue, by queue name.

        Passive declares on a channel of their own, so a missing queue cannot close the
        consuming channel. Raises :class:`~engine.errors.TransportError` when not connected.
        """
        connection = self._connection
        if connection is None or not self.connected:
            raise TransportError("not connected to RabbitMQ")
        depths: dict[str, int] = {}
        async with connection.channel() as channel:
            for name in (self.queue_name, self.dead_letter_queue):
                queue = await channel.declare_queue(name, passive=True)
                depths[name] = queue.declaration_result.message_count or 0
        return depths

    def _on_connection_lost(self, _sender: Any, exc: BaseException | None = None) -> None:
        self._ready = False
        if self._connection is not None:
            logger.warning("command_server.connection_lost", service=self.service, error=repr(exc))

    def _on_reconnected(self, _sender: Any) -> None:
        self._ready = True
        self.stats.reconnects += 1
        logger.info("command_server.reconnected", service=self.service, queue=self.queue_name)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        headers = {
            key: _text(value)
            for key, value in (message.headers or {}).items()
            if not key.startswith("x-") and value is not None
        }
        method = headers.get(names.METHOD_HEADER, "")
        context = {key: headers[key] for key in _LOG_HEADERS if key in headers}
        try:
            with structlog.contextvars.bound_contextvars(
                service=self.service,
                method=method,
                idempotency_key=headers.get(names.IDEMPOTENCY_KEY_HEADER),
                correlation_id=message.correlation_id,
                **context,
            ):
                try:
                    await self._process(message, method, headers)
                except _BROKER_ERRORS as exc:
                    # The channel died under us: the broker requeues the unacked command.
                    logger.warning("command.settle_failed", error=repr(exc))
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _process(
        self, message: AbstractIncomingMessage, method: str, headers: dict[str, str]
    ) -> None:
        failed_before = _deliveries(message)
        if message.redelivered:
            # The previous delivery was never settled (its consumer or connection died while
            # the handler ran): count it as failed before running the command again.
            self.stats.failures += 1
            await self._retry_or_dead_letter(message, failed_before + 1, "consumer lost")
            return
        payload = _decode(message.body)
        if payload is None or not method:
            self.stats.malformed += 1
            await self._dead_letter(message, failed_before + 1, "malformed command")
            return
        try:
            result = await self._handler(method, payload, headers)
            reply = _encode({"ok": result})
        except Exception as exc:  # the wire mapping; anything else is a failed delivery
            to_wire = getattr(exc, "to_wire", None)
            if not callable(to_wire):
                self.stats.failures += 1
                logger.warning(
                    "command.failed", delivery=failed_before + 1, error=repr(exc), exc_info=exc
                )
                await self._retry_or_dead_letter(message, failed_before + 1, repr(exc))
                return
            self.stats.errors += 1
            wire = to_wire()
            logger.info("command.refused", error_type=wire.get("type"))
            await self._reply(message, _encode({"error": wire}))
        else:
            self.stats.processed += 1
            logger.debug("command.processed")
            await self._reply(message, reply)
        await message.ack()

    async def _reply(self, message: AbstractIncomingMessage, body: bytes) -> None:
        replies, commands = self._replies, self._channel
        if not message.reply_to or not message.correlation_id or commands is None:
            logger.debug("command.no_reply_to")
            return
        headers = {k: v for k, v in (message.headers or {}).items() if k in _REPLY_HEADERS}
        reply = aio_pika.Message(
            body,
            content_type="application/json",
            correlation_id=message.correlation_id,
            headers=headers,
        )
        # mandatory=False: a requester that went away simply misses the reply (it re-sends).
        if replies is not None and not replies.is_closed:
            try:
                await replies.default_exchange.publish(
                    reply, routing_key=message.reply_to, mandatory=False
                )
                return
            except _BROKER_ERRORS as exc:
                logger.info("command.reply_channel_down", error=repr(exc))
        # After a reconnect the channels come back in no set order: the reply channel may not
        # be up yet when the command channel delivers again. The channel that delivered the
        # command is up, so the reply goes there (confirmed, which costs only time).
        await commands.default_exchange.publish(
            reply, routing_key=message.reply_to, mandatory=False
        )

    async def _retry_or_dead_letter(
        self, message: AbstractIncomingMessage, failed: int, reason: str
    ) -> None:
        channel = self._channel
        if failed >= self.max_deliveries or channel is None:
            await self._dead_letter(message, failed, reason)
            return
        delay = min(self._retry_backoff * 2 ** (failed - 1), self._retry_backoff_max)
        if delay > 0:
            await asyncio.sleep(delay)
        copy = aio_pika.Message(
            message.body,
            headers={**(message.headers or {}), names.DELIVERIES_HEADER: failed},
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            message_id=message.message_id,
        )
        # Confirmed before the ack: a crash in between duplicates the command, never loses it.
        await channel.default_exchange.publish(copy, routing_key=self.queue_name, mandatory=True)
        await message.ack()
        self.stats.retried += 1
        logger.info("command.retry", failed_deliveries=failed, reason=reason)

    async def _dead_letter(
        self, message: AbstractIncomingMessage, failed: int, reason: str
    ) -> None:
        await message.reject(requeue=False)
        self.stats.dead_lettered += 1
        logger.error(
            "command.dead_lettered",
            reason=reason,
            deliveries=failed,
            dead_letter_queue=self.dead_letter_queue,
        )


def _deliveries(message: AbstractIncomingMessage) -> int:
    """Failed deliveries recorded on the message (0 when absent or garbled)."""
    value = (message.headers or {}).get(names.DELIVERIES_HEADER)
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, (str, bytes)) and value.isdigit():
        return int(value)
    return 0


def _decode(body: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None
