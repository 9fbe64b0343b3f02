"""RabbitMQ request/reply: the engine's :class:`~engine.ports.Transport`.

:class:`RabbitMQTransport`: one robust connection and one channel with publisher
confirms. aio-pika keeps the connection and the channel (and restores them, with the reply
queue, after a reconnect); the hot path publishes and consumes on aiormq's channel underneath,
without aio-pika's per-message objects.

A request is a transient JSON message on the durable direct exchange ``<ns>.commands``, routing
key = service, published ``mandatory`` (an unknown service fails at once instead of timing
out), with a fresh ``correlation_id``, the headers ``idempotency_key``, ``method`` and the
caller's own (``saga_id``...), and ``reply_to`` = the transport's exclusive reply queue
``<ns>.replies.<instance>``. A named queue rather than direct reply-to: the robust channel
re-declares it under the same name after a reconnect, it carries the namespace like every
other name, and FLOOR.md measured both at the same cost.

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

Batches, with no added wait (``max_batch`` > 1): per service, while a publish to it awaits its
confirm, the next commands for it queue up, and leave together in ONE message when it returns
(the shape of the history store's group commit). At one saga in flight every command leaves at
once, alone, as the single-command message above. A batch message carries the header
``x-cloudmart-batch`` (the count) and the body ``{"commands": [{"correlation_id", "headers",
"payload"}, ...]}``, each command's ``headers`` holding its ``method``, ``idempotency_key`` and
the caller's own, as a single message would. The answers come back one message per reply, or
several in one ``{"replies": [{"correlation_id", "ok" | "error"}, ...]}`` message with the same
header; either form is correlated here by id. Each request keeps its own timeout and its own
outcome; a publish that fails fails every request it carried with ``TransportError``.

The service side, which consumes these commands and answers them, is
``services._kit.command_server``; both ends keep their connection through
:class:`~engine.adapters.amqp_link.RobustLink`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import DeliveryError, PublishError
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from engine.adapters import amqp_names as names
from engine.adapters.amqp_link import BROKER_ERRORS, LinkEnd, RobustLink, decode, encode
from engine.errors import RemoteError, StepTimeout, TransportError

__all__ = ["RabbitMQTransport", "TransportStats"]

logger = structlog.get_logger(__name__)


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
    #: Command messages published (a batch is one) and reply messages received.
    messages_sent: int = 0
    reply_messages: int = 0


@dataclasses.dataclass(eq=False)
class _Command:
    """One request waiting for its publish: what goes on the wire, and where its reply goes."""

    correlation_id: str
    method: str
    idempotency_key: str
    headers: dict[str, Any]
    payload: dict[str, Any]
    reply: asyncio.Future[dict[str, Any]]


class RabbitMQTransport(LinkEnd):
    """The engine's :class:`~engine.ports.Transport` over RabbitMQ request/reply.

    ``prefetch`` bounds the replies the broker pushes before they are acked;
    ``reconnect_interval`` is the pause between reconnect attempts; ``max_batch`` bounds the
    commands one message carries (1: every command alone, as a single-command message). Start
    it with ``await start()`` (or ``async with``); ``close()`` fails every pending request with
    ``TransportError``.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        prefetch: int = 64,
        reconnect_interval: float = 1.0,
        max_batch: int = 32,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.namespace = namespace
        self._prefetch = prefetch
        self.max_batch = max_batch
        self.instance = uuid.uuid4().hex[:12]
        self.reply_queue = names.reply_queue(namespace, self.instance)
        self.connection_name = f"{namespace}.client.{self.instance}"
        self.stats = TransportStats()
        self._channel: AbstractRobustChannel | None = None
        self._exchange_name = names.commands_exchange(namespace)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # Per service: the commands waiting for the publish in flight, and the task publishing.
        self._outbox: dict[str, list[_Command]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        # Up once the robust channel re-declared and consumes the reply queue: requests wait
        # on it while the connection is down.
        self._link = RobustLink(
            url,
            name=self.connection_name,
            reconnect_interval=reconnect_interval,
            event="transport",
            log_context={"reply_queue": self.reply_queue},
            on_lost=self._on_connection_lost,
            on_restored=self._on_reconnected,
        )

    async def start(self) -> None:
        await self._link.open(self._declare)
        logger.info("transport.started", reply_queue=self.reply_queue)

    async def _declare(self, connection: AbstractRobustConnection) -> None:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.set_qos(prefetch_count=self._prefetch)
        await channel.declare_exchange(
            self._exchange_name, aio_pika.ExchangeType.DIRECT, durable=True
        )
        # Exclusive: deleted with the connection; the robust channel re-declares it (same
        # name) after a reconnect. Consumed without acks: a reply lives only as long as this
        # connection whether it is acked or not, so an ack per reply would be a frame each way
        # for nothing.
        await channel.declare_queue(self.reply_queue, exclusive=True, auto_delete=True)
        # Consumed on aiormq's channel itself: aio-pika would wrap every reply in an
        # IncomingMessage and a task of its own on top of aiormq's. The robust channel runs
        # its reopen callbacks once it re-declared the queue, before the link is up again.
        channel.reopen_callbacks.add(self._consume_replies)
        await self._consume_replies(channel)
        self._channel = channel

    async def _consume_replies(self, channel: AbstractRobustChannel | None, /) -> None:
        if channel is not None:
            underlay = await channel.get_underlay_channel()
            await underlay.basic_consume(self.reply_queue, self._on_reply, no_ack=True)

    async def close(self) -> None:
        self._channel = None
        self._fail_pending("transport closed")
        senders = list(self._senders.values())
        for sender in senders:
            sender.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        await self._link.close()

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
        if self._channel is None:
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
        # The robust connection comes back by itself (a broker restart, a dropped link): wait for
        # it within this request's timeout instead of failing at once, so an outage shorter
        # than the step's retries costs time, not the saga.
        if not self.connected and not await self._link.wait_up(timeout):
            logger.info("request.broker_still_unreachable", waited=timeout)
        if not self.connected:
            self.stats.transport_errors += 1
            raise TransportError(f"RabbitMQ unreachable: {service}.{method} not sent")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        command = _Command(
            correlation_id,
            method,
            idempotency_key,
            {
                **(headers or {}),
                names.IDEMPOTENCY_KEY_HEADER: idempotency_key,
                names.METHOD_HEADER: method,
            },
            payload,
            future,
        )
        self._pending[correlation_id] = future
        try:
            async with asyncio.timeout_at(deadline):
                self._enqueue(service, command)
                return await future
        except TimeoutError:
            self.stats.timeouts += 1
            log.debug("request.timeout", timeout=timeout)
            raise StepTimeout(f"no reply from {service}.{method} within {timeout}s") from None
        except TransportError as exc:
            self.stats.transport_errors += 1
            log.debug("request.transport_error", error=str(exc))
            raise
        except RemoteError:
            self.stats.remote_errors += 1
            raise
        finally:
            del self._pending[correlation_id]
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a failure set while publishing is not "lost"

    def _enqueue(self, service: str, command: _Command) -> None:
        """Queue ``command`` behind the publish to ``service`` in flight, or start one."""
        self._outbox.setdefault(service, []).append(command)
        if service not in self._senders:
            self._senders[service] = asyncio.create_task(self._send(service))

    async def _send(self, service: str) -> None:
        """Publish what waits for ``service``, a batch per confirm, until nothing waits."""
        try:
            while queue := self._outbox.get(service):
                # A request that timed out while it waited is not sent.
                batch = [command for command in queue[: self.max_batch] if not command.reply.done()]
                del queue[: self.max_batch]
                if not queue:
                    del self._outbox[service]
                if not batch:
                    continue
                channel = self._channel
                try:
                    if channel is None:
                        raise TransportError("transport closed")
                    await self._publish(channel, service, batch)
                except TransportError as exc:
                    for command in batch:
                        if not command.reply.done():
                            command.reply.set_exception(TransportError(str(exc)))
        finally:
            del self._senders[service]

    def _message(self, batch: list[_Command]) -> tuple[bytes, Basic.Properties]:
        """The body and properties of the message carrying ``batch`` (aiormq's own, built
        once: no aio-pika ``Message`` in between)."""
        if len(batch) == 1:
            command = batch[0]
            return encode(command.payload), Basic.Properties(
                content_type="application/json",
                delivery_mode=1,  # transient: see the module docstring
                correlation_id=command.correlation_id,
                reply_to=self.reply_queue,
                message_id=command.idempotency_key,
                headers=command.headers,
            )
        body = encode(
            {
                "commands": [
                    {
                        "correlation_id": command.correlation_id,
                        "headers": command.headers,
                        "payload": command.payload,
                    }
                    for command in batch
                ]
            }
        )
        return body, Basic.Properties(
            content_type="application/json",
            delivery_mode=1,
            correlation_id=uuid.uuid4().hex,
            reply_to=self.reply_queue,
            message_id=uuid.uuid4().hex,
            headers={names.BATCH_HEADER: len(batch)},
        )

    async def _publish(
        self, channel: AbstractRobustChannel, service: str, batch: list[_Command]
    ) -> None:
        what = (
            f"{service}.{batch[0].method}"
            if len(batch) == 1
            else f"a batch of {len(batch)} commands to {service}"
        )
        try:
            body, properties = self._message(batch)
            underlay = await channel.get_underlay_channel()
            # Publisher confirms: aiormq raises DeliveryError on a nack and, the channel
            # being opened with on_return_raises, PublishError on a return.
            await underlay.basic_publish(
                body,
                exchange=self._exchange_name,
                routing_key=service,
                properties=properties,
                mandatory=True,
            )
        except PublishError as exc:
            raise TransportError(f"no queue for service {service!r}: message returned") from exc
        except DeliveryError as exc:
            raise TransportError(f"broker refused {what} (nack)") from exc
        except BROKER_ERRORS as exc:
            raise TransportError(f"could not publish {what}: {exc!r}") from exc
        self.stats.messages_sent += 1

    async def _on_reply(self, message: DeliveredMessage) -> None:
        self._resolve(message)

    def _resolve(self, message: DeliveredMessage) -> None:
        self.stats.reply_messages += 1
        try:
            body = decode(message.body)
        except ValueError:
            body = None
        properties = message.header.properties
        if (properties.headers or {}).get(names.BATCH_HEADER) is None:
            self._settle(properties.correlation_id or "", body)
            return
        replies = body.get("replies") if isinstance(body, dict) else None
        if not isinstance(replies, list):
            logger.error("reply.malformed_batch", correlation_id=properties.correlation_id)
            return
        for reply in replies:
            if isinstance(reply, dict):
                self._settle(str(reply.get("correlation_id", "")), reply)

    def _settle(self, correlation_id: str, body: Any) -> None:
        future = self._pending.get(correlation_id)
        if future is None or future.done():
            self.stats.unmatched_replies += 1
            logger.debug("reply.unmatched", correlation_id=correlation_id)
            return
        self.stats.replies += 1
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            future.set_exception(RemoteError.from_wire(body["error"]))
        elif isinstance(body, dict) and isinstance(body.get("ok"), dict):
            future.set_result(body["ok"])
        else:
            logger.error("reply.malformed", correlation_id=correlation_id)
            future.set_exception(TransportError("malformed reply"))

    def _on_connection_lost(self, _exc: BaseException | None) -> None:
        self._fail_pending("connection to RabbitMQ lost while waiting for the reply")

    def _on_reconnected(self) -> None:
        self.stats.reconnects += 1

    def _fail_pending(self, reason: str) -> None:
        # The replies of these requests were bound to the lost connection's exclusive queue:
        # they can never arrive. The commands may still run; the caller re-sends with the key.
        for future in self._pending.values():
            if not future.done():
                future.set_exception(TransportError(f"{reason}; the command may have run"))
