"""RabbitMQ request/reply against the real broker: the Transport's contract, the command server's
redelivery/dead-letter policy, and reconnects.

Each test gets its own namespace and deletes its queues and exchanges at the end.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aio_pika
import pytest
from conftest import until
from rabbitmq_support import (
    TEST_RABBITMQ_URL,
    delete_topology,
    force_close_connection,
    message_count,
    rabbitmq_transport_pair,
    unique_namespace,
)
from sqlalchemy import exc as sa_exc

from activities.errors import ReservationShipped, StockUnavailable
from activities.faults import DATABASE, Backoff, Outages
from engine.adapters import amqp_names as names
from engine.adapters.memory_transport import current_request
from engine.adapters.rabbitmq import RabbitMQTransport
from engine.errors import RemoteError, StepTimeout, TransportError
from services._kit.command_server import (
    DEAD_AT_HEADER,
    ERROR_HEADER,
    QUEUE_HEADER,
    CommandHandler,
    RabbitMQCommandServer,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(30)]

URL = TEST_RABBITMQ_URL
SERVICE = "inventory"


@pytest.fixture
async def namespace() -> AsyncIterator[str]:
    ns = unique_namespace()
    yield ns
    await delete_topology(URL, ns, [SERVICE])


@pytest.fixture
async def transport(namespace: str) -> AsyncIterator[RabbitMQTransport]:
    async with RabbitMQTransport(URL, namespace=namespace) as client:
        yield client


def server(namespace: str, handler: CommandHandler, **options: Any) -> RabbitMQCommandServer:
    return RabbitMQCommandServer(
        URL, namespace=namespace, service=SERVICE, handler=handler, **options
    )


async def echo_n(method: str, payload: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    return {"ok": payload["n"]}


async def test_request_reply_round_trip_carries_payload_and_headers(
    namespace: str, transport: RabbitMQTransport
) -> None:
    async def echo(method: str, payload: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        return {"method": method, "payload": payload, "headers": headers}

    async with server(namespace, echo):
        reply = await transport.request(
            SERVICE,
            "reserve_stock",
            {"order_id": "o-1", "items": [{"book_id": 1, "quantity": 2}]},
            timeout=5,
            idempotency_key="saga-1:reserve_stock",
            headers={"saga_id": "saga-1"},
        )

    assert reply["method"] == "reserve_stock"
    assert reply["payload"] == {"order_id": "o-1", "items": [{"book_id": 1, "quantity": 2}]}
    assert reply["headers"]["idempotency_key"] == "saga-1:reserve_stock"
    assert reply["headers"]["method"] == "reserve_stock"
    assert reply["headers"]["saga_id"] == "saga-1"
    assert transport.stats.replies == 1


async def test_error_reply_raises_remote_error_with_type_and_retryability(
    namespace: str, transport: RabbitMQTransport
) -> None:
    async def refuse(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        if method == "reserve_stock":
            raise StockUnavailable("not enough stock", book_id=7)
        raise ReservationShipped("shipment still live", order_id="o-1")

    async with server(namespace, refuse) as srv:
        with pytest.raises(RemoteError) as refused:
            await transport.request(SERVICE, "reserve_stock", {}, timeout=5, idempotency_key="k1")
        with pytest.raises(RemoteError) as retryable:
            await transport.request(SERVICE, "release_stock", {}, timeout=5, idempotency_key="k2")

    assert refused.value.type == "StockUnavailable"
    assert refused.value.message == "not enough stock"
    assert refused.value.non_retryable is True and refused.value.retryable is False
    assert refused.value.details == {"book_id": 7}
    assert retryable.value.type == "ReservationShipped"
    assert retryable.value.non_retryable is False and retryable.value.retryable is True
    # Business errors are answers: replied and acked, never retried or dead-lettered.
    assert (srv.stats.errors, srv.stats.failures, srv.stats.dead_lettered) == (2, 0, 0)


async def test_timeout_raises_step_timeout_and_the_late_reply_is_dropped(
    namespace: str, transport: RabbitMQTransport
) -> None:
    release = asyncio.Event()

    async def slow(method: str, payload: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        await release.wait()
        return {"late": True}

    async with server(namespace, slow) as srv:
        with pytest.raises(StepTimeout):
            await transport.request(SERVICE, "reserve_stock", {}, timeout=0.3, idempotency_key="k")
        assert transport._pending == {}
        release.set()
        await until(lambda: transport.stats.unmatched_replies == 1)

    assert srv.stats.processed == 1
    assert transport.stats.timeouts == 1


async def test_unroutable_service_raises_transport_error_quickly(
    transport: RabbitMQTransport,
) -> None:
    started = time.monotonic()
    with pytest.raises(TransportError, match="no queue for service"):
        await transport.request("nobody", "anything", {}, timeout=10, idempotency_key="k")
    assert time.monotonic() - started < 2
    assert transport._pending == {}


async def test_a_command_waits_in_the_durable_queue_as_a_transient_message(
    namespace: str, transport: RabbitMQTransport
) -> None:
    # The history is the command's durable record (module docstring of the adapter): the
    # message is transient, confirmed by the broker, and waits for a server that is away.
    async with server(namespace, echo_n):
        pass  # declares the durable command queue, then goes away
    with pytest.raises(StepTimeout):
        await transport.request(SERVICE, "echo", {"n": 7}, timeout=0.5, idempotency_key="k7")

    waiting = await _get_one(names.command_queue(namespace, SERVICE))
    assert waiting.delivery_mode == aio_pika.DeliveryMode.NOT_PERSISTENT
    assert waiting.headers[names.IDEMPOTENCY_KEY_HEADER] == "k7"
    assert waiting.body == b'{"n":7}'


async def test_200_concurrent_requests_are_each_answered_with_their_own_reply(
    namespace: str, transport: RabbitMQTransport
) -> None:
    async def jittery(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        for _ in range(random.randrange(4)):  # reorder replies relative to requests
            await asyncio.sleep(0)
        return {"n": payload["n"], "key": headers["idempotency_key"]}

    async with server(namespace, jittery) as srv:
        replies = await asyncio.gather(
            *(
                transport.request(SERVICE, "echo", {"n": n}, timeout=15, idempotency_key=f"k{n}")
                for n in range(200)
            )
        )

    assert [reply["n"] for reply in replies] == list(range(200))
    assert [reply["key"] for reply in replies] == [f"k{n}" for n in range(200)]
    assert srv.stats.processed == 200
    assert transport.stats.unmatched_replies == 0


async def test_poison_command_is_dead_lettered_after_max_deliveries_while_others_flow(
    namespace: str, transport: RabbitMQTransport
) -> None:
    poison_calls = 0

    async def handler(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        nonlocal poison_calls
        if method == "explode":
            poison_calls += 1
            raise RuntimeError("database is down")
        return {"n": payload["n"]}

    async with server(namespace, handler, max_deliveries=3, retry_backoff=0.02) as srv:
        poison = asyncio.create_task(
            transport.request(SERVICE, "explode", {}, timeout=1.5, idempotency_key="poison")
        )
        replies = await asyncio.gather(
            *(
                transport.request(SERVICE, "echo", {"n": n}, timeout=5, idempotency_key=f"k{n}")
                for n in range(30)
            )
        )
        dead = names.dead_letter_queue(namespace, SERVICE)
        await until(lambda: message_count(URL, dead))
        after = await transport.request(SERVICE, "echo", {"n": 99}, timeout=5, idempotency_key="z")
        with pytest.raises(StepTimeout):  # no reply for a dead-lettered command
            await poison

    assert [reply["n"] for reply in replies] == list(range(30))
    assert after == {"n": 99}
    assert poison_calls == 3
    assert (srv.stats.failures, srv.stats.retried, srv.stats.dead_lettered) == (3, 2, 1)
    assert await message_count(URL, dead) == 1
    dead_message = await _get_one(dead)
    assert dead_message.headers[names.IDEMPOTENCY_KEY_HEADER] == "poison"
    # what `cloudmart dead-letters list` shows: deliveries, the last error, when, and where from
    assert dead_message.headers[names.DELIVERIES_HEADER] == 3
    assert dead_message.headers[ERROR_HEADER] == "RuntimeError: database is down"
    assert datetime.fromisoformat(str(dead_message.headers[DEAD_AT_HEADER])).tzinfo is not None
    assert dead_message.headers[QUEUE_HEADER] == names.command_queue(namespace, SERVICE)


async def test_an_infrastructure_fault_is_waited_out_without_counting_a_delivery(
    namespace: str, transport: RabbitMQTransport
) -> None:
    # The database is away for more attempts than the delivery limit allows: the command is
    # held and tried again until it succeeds, and never reaches the dead-letter queue.
    calls = 0

    async def handler(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls <= 6:
            raise sa_exc.OperationalError("SELECT 1", {}, Exception("Can't connect to MySQL"))
        return {"n": payload["n"]}

    outages = Outages(backoff=Backoff(initial=0.01, maximum=0.05))
    async with server(namespace, handler, max_deliveries=2, outages=outages) as srv:
        reply = await transport.request(
            SERVICE, "reserve_stock", {"n": 5}, timeout=10, idempotency_key="k"
        )
        assert outages.is_down(DATABASE) is False  # restored by the attempt that succeeded

    assert reply == {"n": 5}
    assert calls == 7
    assert outages.retries[DATABASE] == 6 and outages.outages[DATABASE] == 1
    assert outages.waiting[DATABASE] == 0
    assert (srv.stats.failures, srv.stats.retried, srv.stats.dead_lettered) == (0, 0, 0)
    assert await message_count(URL, names.dead_letter_queue(namespace, SERVICE)) == 0


async def test_a_command_held_on_a_fault_goes_back_uncounted_when_its_server_closes(
    namespace: str, transport: RabbitMQTransport
) -> None:
    # A service restarted during an outage (its health check failing, say): the command it
    # was holding is put back as it came, and the next server runs it at its first delivery.
    async def database_away(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        raise sa_exc.OperationalError("SELECT 1", {}, Exception("Can't connect to MySQL"))

    seen: list[dict[str, Any]] = []

    async def healthy(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        seen.append(payload)
        return {"n": payload["n"]}

    outages = Outages(backoff=Backoff(initial=0.01, maximum=0.05))
    first = server(namespace, database_away, max_deliveries=1, outages=outages)
    await first.start()
    pending = asyncio.create_task(
        transport.request(SERVICE, "reserve_stock", {"n": 3}, timeout=15, idempotency_key="k")
    )
    await until(lambda: outages.retries[DATABASE] >= 3, timeout=10)
    await first.close(drain_timeout=0)
    async with server(namespace, healthy, max_deliveries=1) as second:
        assert await pending == {"n": 3}
    assert seen == [{"n": 3}]  # max_deliveries=1: one counted delivery would have been fatal
    assert (second.stats.failures, second.stats.dead_lettered) == (0, 0)
    assert await message_count(URL, names.dead_letter_queue(namespace, SERVICE)) == 0


async def test_malformed_message_goes_to_the_dead_letter_queue(namespace: str) -> None:
    calls = 0

    async def handler(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {}

    async with server(namespace, handler) as srv:
        connection = await aio_pika.connect(URL)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(names.commands_exchange(namespace))
            await exchange.publish(
                aio_pika.Message(b"{not json", headers={"method": "reserve_stock"}),
                routing_key=SERVICE,
            )
        dead = names.dead_letter_queue(namespace, SERVICE)
        await until(lambda: message_count(URL, dead))

    assert calls == 0
    assert (srv.stats.malformed, srv.stats.dead_lettered) == (1, 1)
    assert (await _get_one(dead)).body == b"{not json"


async def test_ack_after_handler_a_killed_consumer_leaves_the_command_to_the_next_one(
    namespace: str, transport: RabbitMQTransport
) -> None:
    started = asyncio.Event()
    never = asyncio.Event()

    async def stuck(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        started.set()
        await never.wait()
        return {"served_by": "first"}

    async def healthy(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        return {"served_by": "second", "payload": payload, "key": headers["idempotency_key"]}

    first = server(namespace, stuck)
    await first.start()
    pending = asyncio.create_task(
        transport.request(SERVICE, "reserve_stock", {"n": 1}, timeout=15, idempotency_key="k")
    )
    await started.wait()
    await first.close(drain_timeout=0)  # the consumer dies with the command unacked

    async with server(namespace, healthy) as second:
        reply = await pending

    assert reply == {"served_by": "second", "payload": {"n": 1}, "key": "k"}
    assert first.stats.processed == 0
    # The redelivery was counted (one failed delivery) before the command ran again.
    assert (second.stats.failures, second.stats.retried, second.stats.processed) == (1, 1, 1)


async def test_a_resend_carries_the_same_idempotency_key(
    namespace: str, transport: RabbitMQTransport
) -> None:
    seen: list[tuple[str, str]] = []
    release_first = asyncio.Event()

    async def handler(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        seen.append((headers["idempotency_key"], headers["saga_id"]))
        if len(seen) == 1:
            await release_first.wait()
        return {"attempt": len(seen)}

    async with server(namespace, handler):
        send = transport.request
        with pytest.raises(StepTimeout):
            await send(
                SERVICE, "reserve_stock", {}, timeout=0.3, idempotency_key="saga-9:1",
                headers={"saga_id": "saga-9"},
            )  # fmt: skip
        reply = await send(
            SERVICE, "reserve_stock", {}, timeout=5, idempotency_key="saga-9:1",
            headers={"saga_id": "saga-9"},
        )  # fmt: skip
        release_first.set()
        await until(lambda: transport.stats.unmatched_replies == 1)

    assert reply == {"attempt": 2}
    assert seen == [("saga-9:1", "saga-9"), ("saga-9:1", "saga-9")]


async def test_lost_connection_fails_pending_requests_and_the_reply_queue_comes_back(
    namespace: str, transport: RabbitMQTransport
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        if method == "block":
            started.set()
            await release.wait()
        return {"method": method}

    async with server(namespace, handler):
        pending = asyncio.create_task(
            transport.request(SERVICE, "block", {}, timeout=15, idempotency_key="k1")
        )
        await started.wait()
        await force_close_connection(transport.connection_name)
        with pytest.raises(TransportError, match="connection to RabbitMQ lost"):
            await pending

        await until(lambda: transport.connected, timeout=15)
        reply = await transport.request(SERVICE, "after", {}, timeout=10, idempotency_key="k2")
        # The reply to the failed request reaches the re-declared queue (same name) and is
        # dropped as unmatched.
        release.set()
        await until(lambda: transport.stats.unmatched_replies == 1)

    assert reply == {"method": "after"}
    assert transport.stats.transport_errors == 1
    assert transport.stats.reconnects == 1


async def test_server_reconnects_and_serves_commands_sent_while_it_was_away(
    namespace: str, transport: RabbitMQTransport
) -> None:
    async with server(namespace, echo_n) as srv:
        assert srv.connected
        await force_close_connection(srv.connection_name)
        # Sent while the server may be disconnected: the durable queue keeps it.
        reply = await transport.request(SERVICE, "echo", {"n": 5}, timeout=15, idempotency_key="k")
        # The command may be served by the restored consumer a moment before the reconnect
        # callback runs (or on the old connection, before the close reached it): wait for both.
        await until(lambda: srv.connected and srv.stats.reconnects == 1, timeout=15)

    assert reply == {"ok": 5}
    assert srv.stats.processed == 1
    assert srv.stats.reconnects == 1


async def test_a_reply_goes_on_the_command_channel_while_the_reply_channel_is_down(
    namespace: str, transport: RabbitMQTransport
) -> None:
    # After a reconnect the channels come back in no set order, so a command can arrive
    # before the reply channel is back; here that channel is simply closed.
    async with server(namespace, echo_n) as srv:
        assert srv._replies is not None
        await srv._replies.close()
        reply = await transport.request(SERVICE, "echo", {"n": 7}, timeout=5, idempotency_key="k")

    assert reply == {"ok": 7}
    assert srv.stats.processed == 1


async def test_transport_pair_maps_handler_errors_like_the_in_memory_transport() -> None:
    seen: list[Any] = []

    async def reserve(payload: dict[str, Any]) -> dict[str, Any]:
        seen.append(current_request())
        return {"reserved": payload["qty"]}

    async def charge(payload: dict[str, Any]) -> dict[str, Any]:
        raise ValueError("card declined")

    handlers = {"inventory.reserve_stock": reserve, "payment.process_payment": charge}
    async with rabbitmq_transport_pair(handlers, unique_namespace()) as pair:
        reply = await pair.request(
            "inventory", "reserve_stock", {"qty": 2}, timeout=5, idempotency_key="k",
            headers={"saga_id": "s"},
        )  # fmt: skip
        with pytest.raises(RemoteError) as declined:
            await pair.request("payment", "process_payment", {}, timeout=5, idempotency_key="p")
        with pytest.raises(RemoteError) as unknown:
            await pair.request("payment", "refund_payment", {}, timeout=5, idempotency_key="r")

    assert reply == {"reserved": 2}
    assert seen[0].idempotency_key == "k" and seen[0].headers == {"saga_id": "s"}
    assert (declined.value.type, declined.value.message) == ("ValueError", "card declined")
    assert declined.value.retryable is True
    assert unknown.value.type == "UnknownCommand" and unknown.value.non_retryable is True


def test_every_amqp_name_carries_the_namespace() -> None:
    ns = "ns-x"
    all_names = [
        names.commands_exchange(ns),
        names.command_queue(ns, SERVICE),
        names.dead_letter_exchange(ns),
        names.dead_letter_queue(ns, SERVICE),
        names.reply_queue(ns, "abc"),
    ]
    assert all(name.startswith(f"{ns}.") for name in all_names)
    assert len(set(all_names)) == len(all_names)


async def _get_one(queue: str) -> aio_pika.abc.AbstractIncomingMessage:
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        message = await declared.get(no_ack=True, fail=True)
        assert message is not None
        return message


# Batches: commands of several sagas in one message, each with its own outcome -----------------


def _batched_requests(
    transport: RabbitMQTransport,
    methods: list[str],
    *,
    timeout: float = 10,
    timeouts: dict[str, float] | None = None,
) -> list[asyncio.Task[dict[str, Any]]]:
    """One request per method, all made at once: they queue behind the first publish.

    Each waits ``timeout`` seconds for its reply, or its method's entry in ``timeouts``.
    """
    return [
        asyncio.create_task(
            transport.request(
                SERVICE,
                method,
                {"n": n},
                timeout=(timeouts or {}).get(method, timeout),
                idempotency_key=f"saga-{n}:1",
                headers={"saga_id": f"saga-{n}"},
            )
        )
        for n, method in enumerate(methods)
    ]


async def test_commands_of_concurrent_sagas_leave_in_one_message_and_come_back_together(
    namespace: str, transport: RabbitMQTransport
) -> None:
    entered: list[dict[str, str]] = []
    release = asyncio.Event()

    async def handler(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        entered.append(headers)
        await release.wait()  # every command of the batch runs at once, none after another
        return {"n": payload["n"], "key": headers["idempotency_key"]}

    async with server(namespace, handler) as srv:
        requests = _batched_requests(transport, ["reserve_stock"] * 20)
        await until(lambda: len(entered) == 20)
        release.set()  # they all finish at the same time: their replies share one message
        replies = await asyncio.gather(*requests)

    assert [reply["n"] for reply in replies] == list(range(20))
    assert [reply["key"] for reply in replies] == [f"saga-{n}:1" for n in range(20)]
    assert sorted(headers["saga_id"] for headers in entered) == sorted(
        f"saga-{n}" for n in range(20)
    )
    assert (transport.stats.requests, transport.stats.replies) == (20, 20)
    assert (transport.stats.messages_sent, srv.stats.batches) == (1, 1)
    assert transport.stats.reply_messages == 1
    assert srv.stats.processed == 20
    assert await message_count(URL, names.command_queue(namespace, SERVICE)) == 0  # acked


async def test_at_one_request_in_flight_every_command_leaves_at_once_alone(
    namespace: str, transport: RabbitMQTransport
) -> None:
    async with server(namespace, echo_n) as srv:
        replies = [
            await transport.request(SERVICE, "echo", {"n": n}, timeout=5, idempotency_key=f"k{n}")
            for n in range(10)
        ]

    assert replies == [{"ok": n} for n in range(10)]
    assert (transport.stats.messages_sent, transport.stats.reply_messages) == (10, 10)
    assert srv.stats.batches == 0  # single-command messages, as without batching


async def test_max_batch_1_sends_every_command_alone(namespace: str) -> None:
    async with (
        server(namespace, echo_n) as srv,
        RabbitMQTransport(URL, namespace=namespace, max_batch=1) as alone,
    ):
        replies = await asyncio.gather(*_batched_requests(alone, ["echo"] * 8))

    assert replies == [{"ok": n} for n in range(8)]
    assert (alone.stats.messages_sent, srv.stats.batches) == (8, 0)


async def test_a_refusal_a_fault_and_a_poison_in_one_batch_touch_no_other_command(
    namespace: str, transport: RabbitMQTransport
) -> None:
    calls: dict[str, int] = {}

    async def handler(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        calls[method] = calls.get(method, 0) + 1
        if method == "refuse":
            raise StockUnavailable("out of stock", book_id=1, requested=2, available=0)
        if method == "fault" and calls[method] <= 3:
            raise sa_exc.OperationalError("SELECT 1", {}, Exception("Can't connect to MySQL"))
        if method == "explode":
            raise RuntimeError("poisoned")
        return {"n": payload["n"], "method": method}

    outages = Outages(backoff=Backoff(initial=0.01, maximum=0.05))
    async with server(
        namespace, handler, max_deliveries=3, retry_backoff=0.02, outages=outages
    ) as srv:
        methods = ["ok", "refuse", "ok", "fault", "explode", "ok"]
        # The poison is never answered, so its request must time out; the others have room
        # for four deliveries of the fault and publisher confirms slowed by a loaded host.
        requests = _batched_requests(transport, methods, timeout=60, timeouts={"explode": 10})
        dead = names.dead_letter_queue(namespace, SERVICE)
        await until(lambda: message_count(URL, dead))
        outcomes = await asyncio.gather(*requests, return_exceptions=True)

    assert outcomes[0] == {"n": 0, "method": "ok"}
    assert isinstance(outcomes[1], RemoteError) and outcomes[1].type == "StockUnavailable"
    assert outcomes[2] == {"n": 2, "method": "ok"}
    assert outcomes[3] == {"n": 3, "method": "fault"}  # held through the fault, uncounted
    assert isinstance(outcomes[4], StepTimeout)  # dead-lettered: never answered
    assert outcomes[5] == {"n": 5, "method": "ok"}
    assert srv.stats.batches == 1
    assert calls == {"ok": 3, "refuse": 1, "fault": 4, "explode": 3}
    assert (srv.stats.failures, srv.stats.retried, srv.stats.dead_lettered) == (3, 2, 1)
    assert outages.retries[DATABASE] == 3
    # The poison went round and died alone, as a single-command message of its own.
    assert await message_count(URL, dead) == 1
    dead_message = await _get_one(dead)
    assert names.BATCH_HEADER not in dead_message.headers
    assert dead_message.headers[names.METHOD_HEADER] == "explode"
    assert dead_message.headers[names.IDEMPOTENCY_KEY_HEADER] == "saga-4:1"
    assert dead_message.headers["saga_id"] == "saga-4"
    assert dead_message.headers[names.DELIVERIES_HEADER] == 3
    assert dead_message.headers[ERROR_HEADER] == "RuntimeError: poisoned"
    assert json.loads(dead_message.body) == {"n": 4}
    assert await message_count(URL, names.command_queue(namespace, SERVICE)) == 0


async def test_a_batch_is_held_through_an_infrastructure_fault_without_counting_a_delivery(
    namespace: str, transport: RabbitMQTransport
) -> None:
    database_up = asyncio.Event()
    attempts = 0

    async def handler(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        nonlocal attempts
        if not database_up.is_set():
            attempts += 1
            raise sa_exc.OperationalError("SELECT 1", {}, Exception("Can't connect to MySQL"))
        return {"n": payload["n"]}

    outages = Outages(backoff=Backoff(initial=0.01, maximum=0.05))
    async with server(namespace, handler, max_deliveries=1, outages=outages) as srv:
        requests = _batched_requests(transport, ["reserve_stock"] * 6)
        await until(lambda: attempts >= 6 * 3)  # every command met the fault, several times
        assert outages.waiting[DATABASE] == 6
        database_up.set()
        replies = await asyncio.gather(*requests)

    assert replies == [{"n": n} for n in range(6)]
    assert srv.stats.batches == 1
    assert (srv.stats.failures, srv.stats.retried, srv.stats.dead_lettered) == (0, 0, 0)
    assert outages.waiting[DATABASE] == 0
    assert await message_count(URL, names.dead_letter_queue(namespace, SERVICE)) == 0


async def test_a_batch_redelivered_after_its_consumer_died_runs_each_command_once(
    namespace: str, transport: RabbitMQTransport
) -> None:
    # The inbox, as the activities keep it: a key that committed is answered from its record.
    inbox: dict[str, dict[str, Any]] = {}
    effects: list[str] = []
    never = asyncio.Event()

    async def first_handler(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        if payload["n"] % 2:
            await never.wait()  # the consumer dies before these commit
        return commit(payload, headers)

    def commit(payload: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        key = headers["idempotency_key"]
        if key not in inbox:
            effects.append(key)
            inbox[key] = {"n": payload["n"]}
        return inbox[key]

    async def second_handler(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        return commit(payload, headers)

    first = server(namespace, first_handler)
    await first.start()
    requests = _batched_requests(transport, ["reserve_stock"] * 6, timeout=15)
    await until(lambda: len(inbox) == 3)
    await first.close(drain_timeout=0)  # dies holding the batch: half its commands committed

    async with server(namespace, second_handler) as second:
        replies = await asyncio.gather(*requests)

    assert replies == [{"n": n} for n in range(6)]
    assert first.stats.batches == 1
    assert sorted(effects) == sorted(f"saga-{n}:1" for n in range(6))  # each effect once
    # The redelivered batch was split: each command counted once and re-published alone.
    assert (second.stats.batches, second.stats.failures, second.stats.retried) == (1, 6, 6)
    assert second.stats.processed == 6
    assert await message_count(URL, names.dead_letter_queue(namespace, SERVICE)) == 0


async def test_a_malformed_command_in_a_batch_is_dead_lettered_alone_and_the_others_answered(
    namespace: str,
) -> None:
    seen: list[int] = []

    async def handler(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        seen.append(payload["n"])
        return {"n": payload["n"]}

    commands = [
        {"correlation_id": "c0", "headers": {"method": "echo", "idempotency_key": "k0"},
         "payload": {"n": 0}},
        {"correlation_id": "c1", "headers": {"idempotency_key": "k1"}, "payload": {"n": 1}},
        {"correlation_id": "c2", "headers": {"method": "echo", "idempotency_key": "k2"},
         "payload": {"n": 2}},
    ]  # fmt: skip
    async with server(namespace, handler) as srv:
        connection = await aio_pika.connect(URL)
        async with connection:
            channel = await connection.channel()
            replies = await channel.declare_queue(exclusive=True)
            exchange = await channel.get_exchange(names.commands_exchange(namespace))
            await exchange.publish(
                aio_pika.Message(
                    json.dumps({"commands": commands}).encode(),
                    headers={names.BATCH_HEADER: len(commands)},
                    reply_to=replies.name,
                ),
                routing_key=SERVICE,
            )
            dead = names.dead_letter_queue(namespace, SERVICE)
            await until(lambda: message_count(URL, dead))
            answered: dict[str, Any] = {}
            async with asyncio.timeout(10), replies.iterator() as incoming:
                async for reply in incoming:
                    await reply.ack()
                    body = json.loads(reply.body)
                    for one in body.get(
                        "replies", [{**body, "correlation_id": reply.correlation_id}]
                    ):
                        answered[one["correlation_id"]] = one["ok"]
                    if len(answered) == 2:
                        break

    assert answered == {"c0": {"n": 0}, "c2": {"n": 2}}
    assert sorted(seen) == [0, 2]
    assert (srv.stats.batches, srv.stats.malformed, srv.stats.dead_lettered) == (1, 1, 1)
    dead_message = await _get_one(dead)
    assert names.BATCH_HEADER not in dead_message.headers
    assert dead_message.headers[names.IDEMPOTENCY_KEY_HEADER] == "k1"
    assert dead_message.headers[ERROR_HEADER] == "malformed command"
    assert json.loads(dead_message.body) == {"n": 1}
    assert await message_count(URL, names.command_queue(namespace, SERVICE)) == 0


async def test_in_a_batch_each_request_keeps_its_timeout_and_no_reply_waits_for_a_slow_one(
    namespace: str, transport: RabbitMQTransport
) -> None:
    release = asyncio.Event()

    async def handler(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        if method == "slow":
            await release.wait()
        return {"n": payload["n"]}

    async with server(namespace, handler) as srv:
        slow = asyncio.create_task(
            transport.request(SERVICE, "slow", {"n": 0}, timeout=2, idempotency_key="slow")
        )
        fast = _batched_requests(transport, ["echo"] * 4)
        replies = await asyncio.gather(*fast)
        assert not slow.done()  # the fast replies did not wait for the slow command
        with pytest.raises(StepTimeout):
            await slow
        release.set()
        await until(lambda: transport.stats.unmatched_replies == 1)  # its late reply, dropped
        await until(lambda: srv.stats.processed == 5)

    assert replies == [{"n": n} for n in range(4)]
    assert (transport.stats.messages_sent, srv.stats.batches) == (1, 1)
    assert transport.stats.timeouts == 1
