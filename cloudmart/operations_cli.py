"""``cloudmart stock restock`` and ``cloudmart money top-up``: the operations that bring stock
and money in, from the command line.

::

    cloudmart stock restock BOOK_ID QUANTITY     POST /inventory/{book_id}/restock (8002)
    cloudmart money top-up CUSTOMER_ID AMOUNT    POST /payments/top-up (8003)

They call the services' REST API, as ``cloudmart saga`` calls the orchestrator's: the same
route, validation, bearer key (``CLOUDMART_API_KEY``), metrics and logs as any client, against
a real or an embedded deployment alike, and no database credentials on the operator's machine.
Each sends an ``Idempotency-Key`` (``--idempotency-key``, else a fresh one, printed): run it
again with the same key after a lost reply and it takes effect once.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import typer

from services._kit import roster
from services._kit.settings import get_settings

__all__ = ["money_app", "post_operation", "stock_app"]

stock_app = typer.Typer(help="Operations on stock (they are recorded in the ledger).")
money_app = typer.Typer(help="Operations on balances (they are recorded in the ledger).")


def _default_url(service: str) -> str:
    return f"http://127.0.0.1:{roster.SERVICE_PORTS[service]}"


def post_operation(
    base_url: str,
    path: str,
    body: dict[str, Any],
    *,
    idempotency_key: str,
    api_key: str | None,
    transport: httpx.BaseTransport | None = None,
    timeout: float = 10.0,
) -> httpx.Response:
    """POST ``body`` to ``base_url + path`` with the key headers; the response as it came."""
    headers = {"Idempotency-Key": idempotency_key}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    with httpx.Client(base_url=base_url, transport=transport, timeout=timeout) as client:
        return client.post(path, json=body, headers=headers)


def _run(
    ctx: typer.Context,
    service: str,
    url: str | None,
    path: str,
    body: dict[str, Any],
    key: str | None,
) -> None:
    settings = get_settings()
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    sent_key = key or str(uuid.uuid4())
    # A caller (a test) may hand the transport in: ``app(obj={"transport": ...})``.
    transport = (ctx.obj or {}).get("transport")
    try:
        response = post_operation(
            url or _default_url(service),
            path,
            body,
            idempotency_key=sent_key,
            api_key=api_key,
            transport=transport,
        )
    except httpx.TransportError as exc:
        typer.echo(f"cannot reach the {service} service: {exc}", err=True)
        typer.echo(f"retry with --idempotency-key {sent_key} to apply it at most once", err=True)
        raise typer.Exit(2) from exc
    try:
        shown = json.dumps(response.json(), indent=2)
    except ValueError:
        shown = response.text
    if response.status_code != 200:
        typer.echo(f"{response.status_code}: {shown}", err=True)
        raise typer.Exit(1)
    typer.echo(shown)
    typer.echo(f"idempotency key: {sent_key}", err=True)


_KEY = typer.Option(
    None, "--idempotency-key", help="Send this key (a retry with it takes effect once)."
)


@stock_app.command("restock")
def restock(
    ctx: typer.Context,
    book_id: int = typer.Argument(..., min=1, help="The book to add units to."),
    quantity: int = typer.Argument(..., min=1, max=10_000, help="Units to add (1..10000)."),
    url: str | None = typer.Option(None, help="The inventory service (default: port 8002)."),
    idempotency_key: str | None = _KEY,
) -> None:
    """Add QUANTITY units to BOOK_ID's available stock (POST /inventory/{book_id}/restock)."""
    path = f"/inventory/{book_id}/restock"
    _run(ctx, "inventory", url, path, {"quantity": quantity}, idempotency_key)


@money_app.command("top-up")
def top_up(
    ctx: typer.Context,
    customer_id: int = typer.Argument(..., min=1, help="The customer whose balance grows."),
    amount: str = typer.Argument(..., help='The amount, at most 2 decimals (e.g. "12.50").'),
    url: str | None = typer.Option(None, help="The payment service (default: port 8003)."),
    idempotency_key: str | None = _KEY,
) -> None:
    """Add AMOUNT to CUSTOMER_ID's balance (POST /payments/top-up)."""
    body = {"customer_id": customer_id, "amount": amount}
    _run(ctx, "payment", url, "/payments/top-up", body, idempotency_key)
