"""What the dead-letter queues (RabbitMQ) and streams (Redis) hold, read and re-driven.

Orchestration's dead letters are the commands in RabbitMQ's ``<ns>.<service>.dead`` queues
(:mod:`services._kit.command_server`); the choreography's are the entries of Redis's
``<ns>:events:dead:<group>`` streams (:mod:`choreography_pattern.redis_bus`). Reading takes
nothing: the commands are fetched unacknowledged and go back to their queue when the channel
closes. Re-driving puts each chosen dead letter back once (see ``cloudmart dead-letters``).
:func:`gather_dead_letters` serves the command line and the operator console alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from services._kit.settings import Settings

__all__ = ["BrokerUnreachable", "DeadLetter", "Pattern", "gather_dead_letters"]

BROKER_TIMEOUT = 10.0


class Pattern(StrEnum):
    orchestration = "orchestration"
    choreography = "choreography"


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter, as ``list`` shows it.

    ``id``: the dead letter's own id (the dead-letter stream's entry id; a command's
    ``x-cloudmart-dead-id``); ``name``: the command's method or the event's type;
    ``source``: the dead-letter queue or stream it sits in.
    """

    id: str
    pattern: str
    service: str
    name: str
    order_id: str | None
    deliveries: int | None
    error: str
    dead_at: str | None
    source: str


class BrokerUnreachable(RuntimeError):
    """A broker did not answer; ``pattern`` is the one it serves."""

    def __init__(self, pattern: str, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.pattern = pattern


# RabbitMQ -------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _command_letter(service: str, queue: str, message: Any) -> DeadLetter:
    from engine.adapters import amqp_names as names
    from services._kit.command_server import DEAD_AT_HEADER, DEAD_ID_HEADER, ERROR_HEADER

    headers: dict[str, Any] = dict(message.headers or {})
    # Dead-lettered by the broker itself (a reject) rather than by the command server: what
    # the broker's x-death header says.
    deaths = headers.get("x-death") or []
    death: dict[str, Any] = dict(deaths[0]) if deaths else {}
    dead_id = headers.get(DEAD_ID_HEADER)
    if dead_id is None:
        digest = hashlib.sha256(message.body + repr(sorted(headers.items())).encode())
        dead_id = digest.hexdigest()[:12]
    order_id = headers.get("order_id")
    if order_id is None:
        try:
            payload = json.loads(message.body)
        except ValueError:
            payload = None
        order_id = payload.get("order_id") if isinstance(payload, dict) else None
    deliveries = headers.get(names.DELIVERIES_HEADER)
    dead_at = headers.get(DEAD_AT_HEADER)
    if dead_at is None and isinstance(death.get("time"), datetime):
        dead_at = death["time"].astimezone(UTC).isoformat()
    return DeadLetter(
        id=_text(dead_id),
        pattern=Pattern.orchestration.value,
        service=service,
        name=_text(headers.get(names.METHOD_HEADER, "?")),
        order_id=None if order_id is None else _text(order_id),
        deliveries=int(deliveries) if deliveries is not None else None,
        error=_text(headers.get(ERROR_HEADER) or death.get("reason") or ""),
        dead_at=None if dead_at is None else _text(dead_at),
        source=queue,
    )


def _redriven_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """A command's own headers, without what its deliveries and death added."""
    return {key: value for key, value in headers.items() if not key.startswith("x-")}


async def _rabbitmq(
    settings: Settings, services: Sequence[str], ids: Collection[str] | None, *, redrive: bool
) -> list[DeadLetter]:
    """The dead letters of ``services`` (those of ``ids`` only, when given); with ``redrive``
    each is put back on its command queue and removed from the dead letters."""
    import aio_pika
    from aio_pika.exceptions import ChannelClosed

    from engine.adapters import amqp_names as names
    from services._kit.command_server import QUEUE_HEADER

    url = settings.rabbitmq_url or ""
    try:
        async with asyncio.timeout(BROKER_TIMEOUT):
            connection = await aio_pika.connect(url)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        raise BrokerUnreachable(Pattern.orchestration.value, exc) from exc
    found: list[DeadLetter] = []
    async with connection:
        for service in services:
            dead = names.dead_letter_queue(settings.namespace, service)
            # A channel per queue: a missing queue closes the channel it was asked on, and
            # whatever a channel fetched without an ack goes back to its queue when it closes.
            channel = await connection.channel(publisher_confirms=True)
            try:
                queue = await channel.declare_queue(dead, passive=True)
            except ChannelClosed:  # the service never ran here: no dead letters
                continue
            try:
                held = []
                while (message := await queue.get(no_ack=False, fail=False)) is not None:
                    held.append(message)
                for message in held:
                    letter = _command_letter(service, dead, message)
                    if ids is not None and letter.id not in ids:
                        continue
                    found.append(letter)
                    if not redrive:
                        continue
                    headers = dict(message.headers or {})
                    target = _text(
                        headers.get(QUEUE_HEADER)
                        or names.command_queue(settings.namespace, service)
                    )
                    again = aio_pika.Message(
                        message.body,
                        headers=_redriven_headers(headers),
                        content_type=message.content_type,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        correlation_id=message.correlation_id,
                        reply_to=message.reply_to,
                        message_id=message.message_id,
                    )
                    # Confirmed before the dead copy goes: never lost, at worst run twice,
                    # which the inbox turns into once.
                    await channel.default_exchange.publish(
                        again, routing_key=target, mandatory=True
                    )
                    await message.ack()
            finally:
                if not channel.is_closed:
                    await channel.close()
    return found


# Redis ----------------------------------------------------------------------------------------


def _event_letter(service: str, source: str, dead_id: str, fields: dict[str, str]) -> DeadLetter:
    deliveries = fields.get("dead_deliveries")
    dead_at = fields.get("dead_at")
    if dead_at is None:  # older dead letters: the dead-letter entry's id is its time
        millis = dead_id.partition("-")[0]
        if millis.isdigit():
            dead_at = datetime.fromtimestamp(int(millis) / 1000, UTC).isoformat()
    return DeadLetter(
        id=dead_id,
        pattern=Pattern.choreography.value,
        service=service,
        name=fields.get("type", "?"),
        order_id=fields.get("order_id"),
        deliveries=int(deliveries) if deliveries and deliveries.isdigit() else None,
        error=fields.get("dead_reason", ""),
        dead_at=dead_at,
        source=source,
    )


async def _redis(
    settings: Settings, services: Sequence[str], ids: Collection[str] | None, *, redrive: bool
) -> list[DeadLetter]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from choreography_pattern.redis_bus import RedisEventBus
    from choreography_pattern.redis_entries import dead_letter_key

    bus = RedisEventBus.from_url(settings.redis_url or "", settings.namespace)
    found: list[DeadLetter] = []
    try:
        try:
            async with asyncio.timeout(BROKER_TIMEOUT):
                await bus.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
            raise BrokerUnreachable(Pattern.choreography.value, exc) from exc
        for service in services:
            source = dead_letter_key(settings.namespace, service)
            for dead_id, fields in await bus.dead_letter_entries(service):
                if ids is not None and dead_id not in ids:
                    continue
                letter = _event_letter(service, source, dead_id, fields)
                if redrive and await bus.redrive(service, dead_id) is None:
                    continue  # re-driven meanwhile by someone else
                found.append(letter)
    finally:
        await bus.aclose()
    return found


# the commands ---------------------------------------------------------------------------------


async def gather_dead_letters(
    settings: Settings,
    patterns: Sequence[Pattern],
    services: Sequence[str],
    ids: Collection[str] | None,
    *,
    redrive: bool,
) -> tuple[list[DeadLetter], list[BrokerUnreachable]]:
    letters: list[DeadLetter] = []
    unreachable: list[BrokerUnreachable] = []
    for pattern in patterns:
        read = _rabbitmq if pattern is Pattern.orchestration else _redis
        try:
            letters += await read(settings, services, ids, redrive=redrive)
        except BrokerUnreachable as exc:
            unreachable.append(exc)
    return letters, unreachable
