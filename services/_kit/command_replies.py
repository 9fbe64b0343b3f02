"""The replies of :class:`~services._kit.command_server.RabbitMQCommandServer`.

A command alone in its message gets its reply at once, as a message of its own carrying the
command's ``saga_id``, ``workflow_id`` and ``order_id``. The commands of a batch message reply
through a per-requester outbox: each reply leaves as soon as its command is done, together with the
replies of the batch's other commands that finish while the reply publish before it is in
flight (one ``{"replies": [...]}`` message, header ``x-cloudmart-batch``), so nothing waits for
a slow one. Replies go unconfirmed, on a channel of their own (the command channel while that
one is down after a reconnect): they live in the requester's exclusive queue, which no confirm
makes durable. They are published on aiormq's channel under aio-pika's, without an aio-pika
``Message`` per reply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel
from pamqp.commands import Basic

from engine.adapters import amqp_names as names
from engine.adapters.amqp_link import BROKER_ERRORS, encode
from services._kit.command_messages import Command, Single

__all__ = ["Replies"]

logger = structlog.get_logger(__name__)

# Headers a reply carries back from its command, so both ends log the same ids.
_REPLY_HEADERS = ("saga_id", "workflow_id", "order_id")

# The server's channels as they are now: (the reply channel, the command channel).
_Channels = Callable[[], tuple[AbstractChannel | None, AbstractChannel | None]]


class Replies:
    """Publish the server's replies (see the module docstring).

    ``channels()`` gives the server's current channels; with no command channel (the server
    closing) nothing is sent: the requester re-sends with the same key.
    """

    def __init__(self, channels: _Channels) -> None:
        self._channels = channels
        # Per requester's reply queue: the replies of batched commands waiting for the reply
        # publish in flight, and the task publishing them.
        self._outbox: dict[str, list[tuple[asyncio.Future[None], dict[str, Any]]]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}

    async def send(self, command: Command, reply: dict[str, Any]) -> None:
        reply_to = command.reply_to
        if not reply_to or not command.correlation_id or self._channels()[1] is None:
            logger.debug("command.no_reply_to")
            return
        if isinstance(command, Single):
            headers = {k: v for k, v in command.headers.items() if k in _REPLY_HEADERS}
            await self._publish(
                reply_to,
                encode(reply),
                Basic.Properties(
                    content_type="application/json",
                    correlation_id=command.correlation_id,
                    headers=headers,
                ),
            )
            return
        # A command of a batch: its reply leaves with those of the batch's other commands
        # that finished by the time the reply publish in flight returns, never later.
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.setdefault(reply_to, []).append(
            (sent, {"correlation_id": command.correlation_id, **reply})
        )
        if reply_to not in self._senders:
            self._senders[reply_to] = asyncio.create_task(self._send(reply_to))
        await sent

    async def _send(self, reply_to: str) -> None:
        try:
            while waiting := self._outbox.pop(reply_to, None):
                bodies = [body for _sent, body in waiting]
                if len(bodies) == 1:
                    correlation_id = bodies[0].pop("correlation_id")
                    body = encode(bodies[0])
                    properties = Basic.Properties(
                        content_type="application/json", correlation_id=correlation_id
                    )
                else:
                    body = encode({"replies": bodies})
                    properties = Basic.Properties(
                        content_type="application/json",
                        headers={names.BATCH_HEADER: len(bodies)},
                    )
                try:
                    await self._publish(reply_to, body, properties)
                except BROKER_ERRORS as exc:
                    for sent, _body in waiting:
                        if not sent.done():
                            sent.set_exception(exc)
                    continue
                for sent, _body in waiting:
                    if not sent.done():
                        sent.set_result(None)
        finally:
            del self._senders[reply_to]

    async def _publish(self, reply_to: str, body: bytes, properties: Basic.Properties) -> None:
        replies, commands = self._channels()
        # mandatory=False: a requester that went away simply misses the reply (it re-sends).
        if replies is not None and not replies.is_closed:
            try:
                await _publish_on(replies, reply_to, body, properties)
                return
            except BROKER_ERRORS as exc:
                logger.info("command.reply_channel_down", error=repr(exc))
        if commands is None:  # closing: the requester re-sends with the same key
            logger.info("command.reply_not_sent", reason="closing")
            return
        # After a reconnect the channels come back in no set order: the reply channel may not
        # be up yet when the command channel delivers again. The channel that delivered the
        # command is up, so the reply goes there (confirmed, which costs only time).
        await _publish_on(commands, reply_to, body, properties)


async def _publish_on(
    channel: AbstractChannel, reply_to: str, body: bytes, properties: Basic.Properties
) -> None:
    """Publish a reply on aiormq's channel under ``channel``, through the default exchange:
    aio-pika's ``Message`` would only be turned into these properties again."""
    underlay = await channel.get_underlay_channel()
    await underlay.basic_publish(
        body, exchange="", routing_key=reply_to, properties=properties, mandatory=False
    )
