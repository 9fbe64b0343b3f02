""":class:`RabbitMQCommandServer`: a service's side of the RabbitMQ request/reply.

It consumes ``<ns>.<service>.commands`` (durable, bound with the service's routing key,
dead-lettering to ``<ns>.dlx`` → ``<ns>.<service>.dead``) with a bounded prefetch and manual
acks. Per message: decode (malformed → dead-letter at once), call ``handler(method, payload,
headers)``, publish the reply (:mod:`services._kit.command_replies`) and only then ack, so a
command is acked only after its activity committed. What the handler raises decides the rest:

- an exception with ``to_wire()`` (a ``DomainError`` or ``SagaError``) is an answer: error
  reply + ack;
- an infrastructure fault (:func:`activities.faults.is_infrastructure_fault`: the database, a
  broker or the network did not answer) is waited out: the command stays unacked with this
  consumer and runs again after a capped back-off, for as long as the fault lasts, without
  counting a delivery. The outage is logged once when it begins and once when it ends
  (:class:`activities.faults.Outages`), and counted in between;
- anything else is a failed delivery: the command goes back to the queue until it has been
  delivered ``max_deliveries`` times, then to the dead-letter queue.

Counting deliveries: classic queues keep no count (``x-delivery-limit`` needs a quorum queue,
about 1 ms more per round trip on this machine, FLOOR.md). A failed delivery is therefore
re-published to the tail of the queue (persistent, confirmed) with the header
``x-cloudmart-deliveries`` incremented, and the original acked; a message that arrives with
``redelivered`` set (its consumer died holding it) is counted the same way before it runs
again, so even a command that kills its consumer stops after ``max_deliveries``. Re-publishing
to the tail instead of requeueing at the head also lets other commands flow past a poison one,
and a short growing back-off (``retry_backoff``) spaces the deliveries of a failing one.

A dead letter is a confirmed copy published to ``<ns>.dlx`` (then the original is acked), with
what an operator needs to judge it (``cloudmart dead-letters list``): the headers
``x-cloudmart-dead-id`` (the dead letter's own id), ``x-cloudmart-deliveries``,
``x-cloudmart-error`` (the last failure), ``x-cloudmart-dead-at`` (RFC 3339) and
``x-cloudmart-queue`` (where ``redrive`` puts it back), beside the command's own ``method``,
``idempotency_key`` and ``order_id``.

A batch message (header ``x-cloudmart-batch``, several commands in one body: the wire is in
:mod:`engine.adapters.rabbitmq`) is served command by command, concurrently: each runs under
its own headers, inbox key and log context and gets its own outcome by the rules above, so one
command's refusal, fault or crash touches no other. A command that is retried, put back or
dead-lettered goes alone, as a single-command message with its own delivery count and error
(the dead-letter queue and ``cloudmart dead-letters`` see only single commands); the replies
are batched too (:mod:`services._kit.command_replies`). The batch message is acked once every
command in it has its outcome (:mod:`services._kit.command_messages`); one that comes back
``redelivered`` (its consumer died) is split into its commands, each counted and re-published
alone, and the inbox answers those that had already run. Each command has its own transaction,
as it would alone: a batch shares a round trip, not a commit. A single-command message is
served as it always was (old clients, re-driven dead letters).

The client's side, and what a command and its reply look like on the wire, is
:mod:`engine.adapters.rabbitmq`; both ends keep their connection through
:class:`~engine.adapters.amqp_link.RobustLink`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ConsumerTag,
)

from activities.faults import RABBITMQ, Outages
from engine.adapters import amqp_names as names
from engine.adapters.amqp_link import BROKER_ERRORS, LinkEnd, RobustLink
from engine.errors import TransportError
from services._kit.command_messages import (
    Batch,
    Command,
    Item,
    Single,
    decode,
    deliveries,
    headers_of,
    item_headers,
)
from services._kit.command_replies import Replies
from services._kit.metrics import CommandHandler

__all__ = [
    "DEAD_AT_HEADER",
    "DEAD_ID_HEADER",
    "ERROR_HEADER",
    "QUEUE_HEADER",
    "CommandHandler",
    "CommandServerStats",
    "RabbitMQCommandServer",
]

logger = structlog.get_logger(__name__)

# Headers rebound into the log context on receipt (STYLE.md, Logging).
_LOG_HEADERS = ("saga_id", "workflow_id", "order_id", "step", "attempt")
# What a dead letter carries besides the command's own headers (see the module docstring).
ERROR_HEADER = "x-cloudmart-error"
DEAD_ID_HEADER = "x-cloudmart-dead-id"
DEAD_AT_HEADER = "x-cloudmart-dead-at"
QUEUE_HEADER = "x-cloudmart-queue"
_MAX_ERROR_CHARS = 1000
_PUT_BACK_TIMEOUT = 5.0


@dataclasses.dataclass
class CommandServerStats:
    """Counters of one :class:`RabbitMQCommandServer`, read by metrics.

    ``processed``: answered ``ok``; ``errors``: answered with a business error; ``failures``:
    deliveries whose handler raised something that is neither an answer nor an
    infrastructure fault (those are waited out, and counted by :class:`Outages`);
    ``retried``: of the failures, sent round again;
    ``dead_lettered``: sent to the dead-letter queue (``malformed`` ones included);
    ``reconnects``: connections restored after a loss; ``batches``: messages received that
    carried several commands (each command is counted above as if it came alone).
    """

    processed: int = 0
    errors: int = 0
    failures: int = 0
    retried: int = 0
    dead_lettered: int = 0
    malformed: int = 0
    reconnects: int = 0
    batches: int = 0


class RabbitMQCommandServer(LinkEnd):
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
        outages: Outages | None = None,
    ) -> None:
        if max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        self.namespace = namespace
        self.service = service
        self._handler = handler
        self._prefetch = prefetch
        self.max_deliveries = max_deliveries
        self._retry_backoff = retry_backoff
        self._retry_backoff_max = retry_backoff_max
        self.queue_name = names.command_queue(namespace, service)
        self.dead_letter_queue = names.dead_letter_queue(namespace, service)
        self.connection_name = f"{namespace}.{service}.server.{uuid.uuid4().hex[:8]}"
        self.stats = CommandServerStats()
        self.outages = outages or Outages()
        self._channel: AbstractChannel | None = None
        self._replies: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: ConsumerTag | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._reply = Replies(lambda: (self._replies, self._channel))
        self._link = RobustLink(
            url,
            name=self.connection_name,
            reconnect_interval=reconnect_interval,
            event="command_server",
            log_context={"service": service, "queue": self.queue_name},
            on_restored=self._on_reconnected,
        )

    async def start(self) -> None:
        await self._link.open(self._declare)
        logger.info("command_server.started", service=self.service, queue=self.queue_name)

    async def _declare(self, connection: AbstractRobustConnection) -> None:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=self._prefetch)
        # Replies go unconfirmed, on a channel of their own: the reply queue is exclusive to
        # the requester's connection, so a reply is never durable anyway, and a lost one costs
        # a re-send with the same key. A confirm would be one more frame per command and a
        # broker round trip before the ack.
        replies = await connection.channel(publisher_confirms=False)
        commands = await channel.declare_exchange(
            names.commands_exchange(self.namespace), aio_pika.ExchangeType.DIRECT, durable=True
        )
        dlx_name = names.dead_letter_exchange(self.namespace)
        dlx = await channel.declare_exchange(dlx_name, aio_pika.ExchangeType.DIRECT, durable=True)
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
        self._channel, self._replies, self._queue = channel, replies, queue

    async def close(self, *, drain_timeout: float = 10.0) -> None:
        """Stop consuming, let in-flight commands finish for ``drain_timeout`` s, disconnect.

        Commands still running after that are cancelled; unacked, they go back to the queue.
        One held on an infrastructure fault is put back by this server first, without a
        delivery counted: a service restarted during an outage (a health check failing, say)
        costs its commands nothing.
        """
        queue, tag = self._queue, self._consumer_tag
        self._channel = self._replies = self._queue = self._consumer_tag = None
        if self._link.connection is None:
            return
        if queue is not None and tag is not None:
            try:
                await queue.cancel(tag)
            except BROKER_ERRORS as exc:  # already disconnected: nothing left to cancel
                logger.info("command_server.cancel_failed", error=repr(exc))
        inflight = set(self._inflight)
        if inflight and drain_timeout > 0:
            await asyncio.wait(inflight, timeout=drain_timeout)
        for task in inflight:
            task.cancel()
        if inflight:  # a command held on a fault goes back to the queue (_put_back) first
            await asyncio.wait(inflight, timeout=_PUT_BACK_TIMEOUT)
        await self._link.close()
        await asyncio.gather(*inflight, return_exceptions=True)
        logger.info("command_server.closed", service=self.service)

    async def queue_depths(self) -> dict[str, int]:
        """Messages waiting in the command queue and in the dead-letter queue, by queue name.

        Passive declares on a channel of their own, so a missing queue cannot close the
        consuming channel. Raises :class:`~engine.errors.TransportError` when not connected.
        """
        connection = self._link.connection
        if connection is None or not self.connected:
            raise TransportError("not connected to RabbitMQ")
        depths: dict[str, int] = {}
        async with connection.channel() as channel:
            for name in (self.queue_name, self.dead_letter_queue):
                queue = await channel.declare_queue(name, passive=True)
                depths[name] = queue.declaration_result.message_count or 0
        return depths

    def _on_reconnected(self) -> None:
        self.stats.reconnects += 1
        self.outages.restored(RABBITMQ)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            if (message.headers or {}).get(names.BATCH_HEADER) is None:
                await self._serve(Single(message), headers_of(message.headers))
            else:
                await self._serve_batch(message)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _serve_batch(self, message: AbstractIncomingMessage) -> None:
        """Each command of a batch message, concurrently; the message acked once all settled."""
        body = decode(message.body)
        items = body.get("commands") if body is not None else None
        if not isinstance(items, list) or not items:
            self.stats.malformed += 1
            try:
                await self._dead_letter(Single(message), deliveries(message) + 1, "malformed batch")
            except BROKER_ERRORS as exc:
                self.outages.lost(RABBITMQ, exc, service=self.service)
            return
        self.stats.batches += 1
        batch = Batch(message, len(items))
        await asyncio.gather(
            *(self._serve(Item(batch, item), item_headers(item)) for item in items)
        )

    async def _serve(self, command: Command, headers: dict[str, str]) -> None:
        method = headers.get(names.METHOD_HEADER, "")
        context = {key: headers[key] for key in _LOG_HEADERS if key in headers}
        with structlog.contextvars.bound_contextvars(
            service=self.service,
            method=method,
            idempotency_key=headers.get(names.IDEMPOTENCY_KEY_HEADER),
            correlation_id=command.correlation_id,
            **context,
        ):
            try:
                await self._process(command, method, headers)
            except BROKER_ERRORS as exc:
                # The channel died under us: the broker requeues the unacked command.
                # Logged once per outage: every command in flight ends here at once.
                self.outages.lost(RABBITMQ, exc, service=self.service)

    async def _process(self, command: Command, method: str, headers: dict[str, str]) -> None:
        failed_before = command.failed_before
        if command.redelivered:
            # The previous delivery was never settled (its consumer or connection died while
            # the handler ran): count it as failed before running the command again.
            self.stats.failures += 1
            await self._retry_or_dead_letter(command, failed_before + 1, "consumer lost")
            return
        payload = command.payload
        if payload is None or not method:
            self.stats.malformed += 1
            await self._dead_letter(command, failed_before + 1, "malformed command")
            return

        async def attempt() -> dict[str, Any]:
            try:
                result = await self._handler(method, payload, headers)
            except Exception as exc:  # the wire mapping: a business answer is a reply
                to_wire = getattr(exc, "to_wire", None)
                if not callable(to_wire):
                    raise
                self.stats.errors += 1
                wire = to_wire()
                logger.info("command.refused", error_type=wire.get("type"))
                return {"error": wire}
            self.stats.processed += 1
            logger.debug("command.processed")
            return {"ok": result}

        held = False

        async def on_fault(_dependency: str) -> None:
            nonlocal held
            held = True

        channel = self._channel
        try:
            # Held, unacked, while the database or the network is away: no delivery counted.
            reply = await self.outages.wait_out(attempt, on_fault=on_fault, service=self.service)
        except asyncio.CancelledError:
            if held and channel is not None:
                await self._put_back(channel, command, failed_before)
            raise
        except Exception as exc:  # neither an answer nor a fault: a failed delivery
            self.stats.failures += 1
            logger.warning(
                "command.failed", delivery=failed_before + 1, error=repr(exc), exc_info=exc
            )
            await self._retry_or_dead_letter(command, failed_before + 1, _describe(exc))
            return
        await self._reply.send(command, reply)
        await command.ack()

    async def _put_back(self, channel: AbstractChannel, command: Command, failed: int) -> None:
        """``command`` to the tail of the queue as it came (no delivery counted), then acked."""
        try:
            copy = command.copy({names.DELIVERIES_HEADER: failed})
            await channel.default_exchange.publish(
                copy, routing_key=self.queue_name, mandatory=True
            )
            await command.ack()
        except BROKER_ERRORS as exc:  # the broker requeues it itself, as redelivered
            logger.info("command.put_back_failed", error=repr(exc))
            return
        logger.info("command.put_back", reason="closing while waiting on a fault")

    async def _retry_or_dead_letter(self, command: Command, failed: int, reason: str) -> None:
        channel = self._channel
        if channel is None:  # closing: back to the queue (counted when it is redelivered)
            await command.requeue()
            return
        if failed >= self.max_deliveries:
            await self._dead_letter(command, failed, reason)
            return
        delay = min(self._retry_backoff * 2 ** (failed - 1), self._retry_backoff_max)
        if delay > 0:
            await asyncio.sleep(delay)
        copy = command.copy({names.DELIVERIES_HEADER: failed, ERROR_HEADER: reason})
        # Confirmed before the ack: a crash in between duplicates the command, never loses it.
        await channel.default_exchange.publish(copy, routing_key=self.queue_name, mandatory=True)
        await command.ack()
        self.stats.retried += 1
        logger.info("command.retry", failed_deliveries=failed, reason=reason)

    async def _dead_letter(self, command: Command, failed: int, reason: str) -> None:
        channel = self._channel
        if channel is None:  # closing: the broker's own dead-lettering, without our headers
            await command.reject()
        else:
            copy = command.copy(
                {
                    DEAD_ID_HEADER: uuid.uuid4().hex[:12],
                    names.DELIVERIES_HEADER: failed,
                    ERROR_HEADER: reason[:_MAX_ERROR_CHARS],
                    DEAD_AT_HEADER: datetime.now(UTC).isoformat(timespec="milliseconds"),
                    QUEUE_HEADER: self.queue_name,
                },
            )
            exchange = await channel.get_exchange(names.dead_letter_exchange(self.namespace))
            # Confirmed before the ack, like a retry: never lost, at worst dead twice.
            await exchange.publish(copy, routing_key=self.service, mandatory=True)
            await command.ack()
        self.stats.dead_lettered += 1
        logger.error(
            "command.dead_lettered",
            reason=reason,
            deliveries=failed,
            dead_letter_queue=self.dead_letter_queue,
        )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
