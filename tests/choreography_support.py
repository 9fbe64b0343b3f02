"""What the choreography's end-to-end and chaos suites share: a deployment of the four services
on MariaDB and Redis, a shop of scenario-private books and customers, and waits on orders."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from conftest import until
from processes import Deployment, deployed
from shop import Shop

from services._kit.roster import DOMAIN_SERVICES

SERVICES = DOMAIN_SERVICES
TERMINAL = ("COMPLETED", "CANCELLED")


@contextmanager
def choreography_deployment(
    database: str,
    directory: Path,
    *,
    base_port: int = 18000,
    namespace: str | None = None,
    **env: str,
) -> Iterator[Deployment]:
    """The four services in the choreography, on a fresh database and Redis namespace (a new
    one unless ``namespace`` is given)."""
    with deployed(
        "choreography",
        database,
        directory,
        base_port=base_port,
        namespace=namespace,
        **{"CLOUDMART_EVENT_CLAIM_IDLE": "1", **env},
    ) as deployment:
        yield deployment


async def start(api: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> str:
    response = await api.post("/orders", json=body, headers=headers)
    assert response.status_code == 202, response.text
    order_id = str(response.json()["order_id"])
    assert response.headers["location"] == f"/orders/{order_id}"
    return order_id


async def finished(api: httpx.AsyncClient, order_id: str, timeout: float = 30) -> dict[str, Any]:
    """The order (with its events) once it is COMPLETED or CANCELLED."""

    async def terminal() -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.get(f"/orders/{order_id}", params={"wait": 5})).json()
        return body if body["status"] in TERMINAL else None

    return await until(terminal, timeout=timeout, interval=0.01)


async def run_all(
    api: httpx.AsyncClient, shop: Shop, bodies: list[dict[str, Any]], timeout: float = 60
) -> dict[str, str]:
    """Start every order at once; their final statuses once all are terminal (read by SQL)."""
    ids = list(await asyncio.gather(*(start(api, body) for body in bodies)))

    def done() -> dict[str, str] | None:
        statuses = shop.statuses(ids)
        return statuses if all(s in TERMINAL for s in statuses.values()) else None

    return await until(done, timeout=timeout, interval=0.1)
