"""The choreography from the command line: `cloudmart up --pattern choreography` embedded, and
`cloudmart events tail` on a real Redis stream."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from conftest import TEST_REDIS_URL, answers_200, port_free, until_sync

from choreography_pattern.events import Event
from choreography_pattern.redis_entries import stream_key

ORDER = {
    "customer_id": 1,
    "items": [{"book_id": 2, "quantity": 1}],
    "shipping_address": {
        "name": "Hanako",
        "line1": "1-2-3",
        "city": "Tokyo",
        "postal_code": "150-0002",
        "country": "JP",
    },
}


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.mark.slow
def test_up_embedded_choreography_completes_an_order_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    if not all(port_free(p) for p in (8001, 8002, 8003, 8004)):
        pytest.skip("ports 8001-8004 are taken by a running CloudMart")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDMART_")}
    env["CLOUDMART_SQLITE_PATH"] = str(tmp_path / "choreo.db")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudmart", "up", "--pattern", "choreography"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = _lines(proc)
    try:

        def healthy() -> bool:
            assert proc.poll() is None, "cloudmart up exited early"
            return answers_200("http://127.0.0.1:8001/health")

        until_sync(healthy, timeout=30, interval=0.05, what="the order service healthy")
        assert port_free(8005), "no orchestrator in the choreography"
        placed = httpx.post("http://127.0.0.1:8001/orders", json=ORDER, timeout=5)
        assert placed.status_code == 202, placed.text
        order_id = placed.json()["order_id"]
        final = httpx.get(
            f"http://127.0.0.1:8001/orders/{order_id}", params={"wait": 15}, timeout=20
        ).json()
        assert final["status"] == "COMPLETED"
        assert httpx.get("http://127.0.0.1:8002/inventory/2", timeout=5).json()["reserved"] == 0
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
    output = "".join(lines.queue)
    assert code == 0, output


@pytest.mark.redis
def test_events_tail_prints_events_as_they_are_added(tmp_path: Path) -> None:
    namespace = f"test-tail-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDMART_")}
    env.update(CLOUDMART_REDIS_URL=TEST_REDIS_URL, CLOUDMART_NAMESPACE=namespace)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudmart", "events", "tail"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = _lines(proc)
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        event = Event("StockReserved", "order-tail-1", {"items": []})

        # tail reads from "now": add the event until the running tail has printed it
        def tail_printed() -> str | None:
            assert proc.poll() is None, "".join(lines.queue)
            client.xadd(stream_key(namespace), event.to_fields())
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                return None
            return line if "order-tail-1" in line else None

        printed = until_sync(tail_printed, timeout=20, interval=0, what="events tail printed")
        assert "StockReserved" in printed
        assert "from=inventory" in printed
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
        client.delete(stream_key(namespace))
        client.close()
    assert code == 0
