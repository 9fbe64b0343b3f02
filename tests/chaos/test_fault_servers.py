"""The private servers of the fault kit: each starts on its own port and data directory, and
what it acknowledged before a SIGKILL is there after the restart; a server that never gets
ready fails its start past the deadline and leaves no process behind."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aio_pika
import pymysql
import pytest
from faults.servers import OwnMariaDB, OwnRabbitMQ, OwnRedis, find_binary

pytestmark = [pytest.mark.slow]


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "server"


def redis_command(port: int, *words: str) -> bytes:
    request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        return sock.recv(1024)


def test_binaries_are_found_on_path_or_in_system_directories() -> None:
    assert find_binary("mariadbd") is not None
    assert find_binary("no-such-server-binary") is None


@pytest.mark.redis
def test_own_redis_keeps_acknowledged_writes_across_a_kill(directory: Path) -> None:
    server = OwnRedis(directory, 16379)
    with server:
        assert redis_command(server.port, "SET", "infra-key", "kept") == b"+OK\r\n"
        first = server.process
        server.restart(kill=True)
        assert server.process is not first and server.starts == 2
        assert redis_command(server.port, "GET", "infra-key") == b"$4\r\nkept\r\n"
    assert not server.running
    assert (directory / "appendonlydir").is_dir()  # its own data directory, AOF on


@pytest.mark.mysql
def test_own_mariadb_keeps_committed_rows_across_a_kill(directory: Path) -> None:
    def connect() -> pymysql.Connection:  # type: ignore[type-arg]
        return pymysql.connect(host="127.0.0.1", port=server.port, user="root", autocommit=True)

    server = OwnMariaDB(directory, 13306)
    with server:
        connection = connect()
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE cloudmart_test_infra_kit")
            cursor.execute("CREATE TABLE cloudmart_test_infra_kit.t (v INT) ENGINE=InnoDB")
            cursor.execute("INSERT INTO cloudmart_test_infra_kit.t VALUES (42)")
        connection.close()
        server.restart(kill=True)
        connection = connect()
        with connection.cursor() as cursor:
            cursor.execute("SELECT v FROM cloudmart_test_infra_kit.t")
            assert cursor.fetchall() == ((42,),)
        connection.close()
    assert not server.running


@pytest.mark.rabbitmq
async def test_own_rabbitmq_keeps_confirmed_persistent_messages_across_a_kill(
    directory: Path,
) -> None:
    server = OwnRabbitMQ(directory, 15673)
    await asyncio.to_thread(server.start)
    try:
        connection = await aio_pika.connect(server.url)
        async with connection:
            await (await connection.channel()).declare_queue("infra-kit", durable=True)
        # a queue's definition reaches the disk lazily; CloudMart's queues exist long before
        # any crash, so this one is made durable by a graceful restart first
        await asyncio.to_thread(server.restart, kill=False)
        connection = await aio_pika.connect(server.url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            queue = await channel.declare_queue("infra-kit", durable=True)
            await channel.default_exchange.publish(
                aio_pika.Message(b"kept", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue.name,
            )
        await asyncio.to_thread(server.restart, kill=True)
        connection = await aio_pika.connect(server.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("infra-kit", durable=True)
            message = await queue.get(timeout=5)
            assert message is not None and message.body == b"kept"
            await message.ack()
    finally:
        await asyncio.to_thread(server.stop)
    assert not server.running


@pytest.mark.redis
def test_a_server_that_never_gets_ready_fails_its_start_and_is_killed(directory: Path) -> None:
    class NeverReady(OwnRedis):
        def ready(self) -> bool:
            return False

    server = NeverReady(directory, 16379, ready_timeout=0.5)
    with pytest.raises(pytest.fail.Exception, match="ready not met within"):
        server.start()
    assert not server.running
