"""The commands as :class:`~services._kit.command_server.RabbitMQCommandServer` settles them.

A command comes alone in its message (:class:`Single`: settling it settles the message) or
as one of a batch message's commands (:class:`Item`, whose :class:`Batch` is acked once every
command in it has its outcome). Either way a :class:`Command` has its reply address, headers,
payload and delivery count, can be re-published alone (``copy``) and settled. Beside them, the
reading of a message's body and headers (:func:`decode`, :func:`headers_of`,
:func:`item_headers`, :func:`deliveries`); the wire itself is :mod:`engine.adapters.rabbitmq`.
"""

from __future__ import annotations

import abc
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from engine.adapters import amqp_names as names
from engine.adapters.amqp_link import decode as decode_json
from engine.adapters.amqp_link import encode, text

__all__ = [
    "Batch",
    "Command",
    "Item",
    "Single",
    "decode",
    "deliveries",
    "headers_of",
    "item_headers",
]


class Command(abc.ABC):
    """One command as the server settles it: alone in its message, or one of a batch.

    ``copy(headers)`` is the command as a single-command message (persistent), what a retry,
    a put-back or a dead letter publishes; ``ack``/``requeue``/``reject`` settle it.
    """

    correlation_id: str | None
    reply_to: str | None
    headers: dict[str, Any]
    payload: dict[str, Any] | None
    failed_before: int
    redelivered: bool

    @abc.abstractmethod
    def copy(self, headers: dict[str, Any]) -> aio_pika.Message: ...

    @abc.abstractmethod
    async def ack(self) -> None: ...

    @abc.abstractmethod
    async def requeue(self) -> None: ...

    @abc.abstractmethod
    async def reject(self) -> None: ...


class Single(Command):
    """A single-command message: settling the command settles the message."""

    def __init__(self, message: AbstractIncomingMessage) -> None:
        self.message = message
        self.correlation_id = message.correlation_id
        self.reply_to = message.reply_to
        self.headers = dict(message.headers or {})
        self.failed_before = deliveries(message)
        self.redelivered = bool(message.redelivered)
        self.payload = decode(message.body)

    def copy(self, headers: dict[str, Any]) -> aio_pika.Message:
        return _copy(self.message, headers)

    async def ack(self) -> None:
        await self.message.ack()

    async def requeue(self) -> None:
        await self.message.nack(requeue=True)

    async def reject(self) -> None:
        await self.message.reject(requeue=False)


class Batch:
    """A batch message, acked once every command in it has its outcome.

    A command that could not be settled on its own (the server closing) leaves the whole
    message to the broker: requeued, and each command counted when it comes back.
    """

    def __init__(self, message: AbstractIncomingMessage, size: int) -> None:
        self.message = message
        self.left = size
        self.unsettled = False

    async def settled(self, *, unsettled: bool = False) -> None:
        self.left -= 1
        self.unsettled = self.unsettled or unsettled
        if self.left == 0:
            if self.unsettled:
                await self.message.nack(requeue=True)
            else:
                await self.message.ack()


class Item(Command):
    """One command of a batch message: re-published alone when it is retried or dead."""

    def __init__(self, batch: Batch, item: Any) -> None:
        self.batch = batch
        message = batch.message
        entry = item if isinstance(item, dict) else {}
        self.correlation_id = _str_or_none(entry.get("correlation_id"))
        self.reply_to = message.reply_to
        self.headers = entry["headers"] if isinstance(entry.get("headers"), dict) else {}
        payload = entry.get("payload")
        self.payload = payload if isinstance(payload, dict) else None
        self.failed_before = deliveries(message)
        self.redelivered = bool(message.redelivered)
        self._entry = entry

    def copy(self, headers: dict[str, Any]) -> aio_pika.Message:
        body = encode(self.payload) if self.payload is not None else encode(self._entry)
        key = self.headers.get(names.IDEMPOTENCY_KEY_HEADER)
        return aio_pika.Message(
            body,
            headers={**self.headers, **headers},
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=self.correlation_id,
            reply_to=self.reply_to,
            message_id=key if isinstance(key, str) else None,
        )

    async def ack(self) -> None:
        await self.batch.settled()

    async def requeue(self) -> None:
        await self.batch.settled(unsettled=True)

    async def reject(self) -> None:
        await self.batch.settled(unsettled=True)


def headers_of(raw: Any) -> dict[str, str]:
    """The string headers a handler sees (not the ``x-`` ones of this server)."""
    return {
        key: text(value)
        for key, value in (raw or {}).items()
        if not key.startswith("x-") and value is not None
    }


def item_headers(item: Any) -> dict[str, str]:
    return headers_of(item.get("headers") if isinstance(item, dict) else None)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _copy(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """``message`` again (persistent), its headers updated with ``headers``."""
    return aio_pika.Message(
        message.body,
        headers={**(message.headers or {}), **headers},
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message.message_id,
    )


def deliveries(message: AbstractIncomingMessage) -> int:
    """Failed deliveries recorded on the message (0 when absent or garbled)."""
    value = (message.headers or {}).get(names.DELIVERIES_HEADER)
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, (str, bytes)) and value.isdigit():
        return int(value)
    return 0


def decode(body: bytes) -> dict[str, Any] | None:
    """The JSON object of ``body``; None when it is not one."""
    try:
        payload = decode_json(body)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None
