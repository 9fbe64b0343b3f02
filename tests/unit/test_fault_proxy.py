"""The fault proxy against a local echo server: each mode does what it says, and modes switch
while connections are open."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest
from faults.proxy import FaultProxy, Mode

PROXY_PORT = 28690


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[str, int]]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address  # type: ignore[misc]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(*echo, listen_port=PROXY_PORT) as running:
        yield running


def connect(proxy: FaultProxy, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=timeout)


def roundtrip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def dropped(sock: socket.socket) -> bool:
    """True when the proxy has cut ``sock``: a reset, or end of stream, on the next exchange."""
    try:
        sock.sendall(b"still there?")
        return sock.recv(100) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def refused(proxy: FaultProxy) -> bool:
    """True when a new connection to ``proxy`` can never carry a byte.

    The kernel completes the handshake before the proxy accepts, so a refusal is a reset: seen
    by the connect itself when the RST lands before it returns (as on a loaded machine), or by
    the first exchange after it.
    """
    try:
        sock = connect(proxy)
    except ConnectionResetError:
        return True
    with sock:
        return dropped(sock)


def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    assert proxy.mode is Mode.PASS
    with connect(proxy) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
        payload = bytes(range(256)) * 1000  # several chunks, order kept
        assert roundtrip(sock, payload) == payload
    assert proxy.stats.accepted == 1


def test_delay_holds_each_chunk_both_ways(proxy: FaultProxy) -> None:
    proxy.delay(0.3)
    with connect(proxy) as sock:
        started = time.monotonic()
        assert roundtrip(sock, b"slow") == b"slow"
        # held 0.3 s on the way in and 0.3 s on the way out
        assert time.monotonic() - started >= 0.6
        proxy.pass_through()
        assert roundtrip(sock, b"fast again") == b"fast again"


def test_blackhole_accepts_and_reads_but_never_answers(proxy: FaultProxy) -> None:
    proxy.blackhole()
    with connect(proxy, timeout=0.5) as sock:
        sock.sendall(b"anyone there?")
        with pytest.raises(TimeoutError):
            sock.recv(100)
    assert proxy.stats.bytes_swallowed >= len(b"anyone there?")
    assert proxy.stats.bytes_forwarded == 0


def test_an_open_connection_falls_silent_in_the_blackhole_and_is_reset_when_it_heals(
    proxy: FaultProxy,
) -> None:
    with connect(proxy, timeout=0.5) as sock:
        assert roundtrip(sock, b"before") == b"before"
        proxy.blackhole()
        sock.sendall(b"lost")
        with pytest.raises(TimeoutError):
            sock.recv(100)
        proxy.pass_through()
        assert dropped(sock)
    with connect(proxy) as fresh:  # new connections flow again
        assert roundtrip(fresh, b"healed") == b"healed"


def test_reset_drops_open_connections_and_refuses_new_ones(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"ping") == b"ping"
        proxy.reset()
        assert dropped(sock)
    assert refused(proxy)
    assert proxy.stats.reset >= 2
    proxy.pass_through()
    with connect(proxy) as sock:
        assert roundtrip(sock, b"back") == b"back"


def test_a_stopped_proxy_refuses_connections(echo: tuple[str, int]) -> None:
    proxy = FaultProxy(*echo, listen_port=PROXY_PORT + 1).start()
    with connect(proxy) as sock:
        assert roundtrip(sock, b"x") == b"x"
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
