"""``cloudmart saga``: find, inspect and act on sagas through the orchestrator's REST API.

::

    cloudmart saga list [--status S ...] [--needs-operator] [--failed-step STEP]
                        [--workflow W] [--created-after T] [--created-before T]
                        [--order-id PREFIX] [--limit N] [--cursor C | --all] [--json]
    cloudmart saga stats [--json]
    cloudmart saga show ORDER_ID [--json]
    cloudmart saga history ORDER_ID [--json]
    cloudmart saga export ORDER_ID [--out FILE]
    cloudmart saga retry|resume|compensate ORDER_ID --reason TEXT
    cloudmart saga cancel ORDER_ID

Every command takes ``--url`` (default ``http://127.0.0.1:8005``) and sends
``CLOUDMART_API_KEY``, when set, as the bearer token. It exits 0 when the API did what was
asked, 1 when it refused (the one-line reason printed: an unknown saga, an action that does not
apply to the saga's status, a bad filter), and 2 when the orchestrator could not be reached.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer

from services._kit.settings import get_settings

__all__ = ["saga_app"]

DEFAULT_URL = "http://127.0.0.1:8005"
PAGE_ALL = 500  # the API's largest page, what --all asks for unless --limit says otherwise
TIMEOUT = 30.0

saga_app = typer.Typer(
    help="Find, inspect and act on sagas through the orchestrator's REST API.",
    no_args_is_help=True,
)

Url = Annotated[str, typer.Option(help="The orchestrator's base URL.")]
OrderId = Annotated[str, typer.Argument(help="The saga's order id.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON as it is.")]
Reason = Annotated[
    str, typer.Option(help="Why: recorded in the saga's history with the action (required).")
]


class _Refused(Exception):
    """The API answered with an error (exit 1) or could not be reached (exit 2)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Api:
    """The orchestrator's REST API over one connection; errors become :class:`_Refused`."""

    def __init__(self, client: httpx.Client, url: str) -> None:
        self._client = client
        self._url = url

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        try:
            response = self._client.request(method, path, params=params, json=body)
        except httpx.TransportError as exc:
            why = str(exc) or type(exc).__name__
            raise _Refused(f"cannot reach the orchestrator at {self._url}: {why}", 2) from None
        if response.status_code >= 400:
            raise _Refused(_error_line(response), 1)
        try:
            return response.json()
        except ValueError:
            why = f"{self._url} did not answer with JSON: is it the orchestrator?"
            raise _Refused(why, 2) from None


@contextmanager
def _api(command: str, url: str) -> Iterator[_Api]:
    """The API at ``url``; a refusal ends ``cloudmart saga COMMAND`` with its line and code."""
    key = get_settings().api_key
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    base = url.rstrip("/")
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=TIMEOUT) as client:
            yield _Api(client, base)
    except _Refused as refused:
        typer.echo(f"cloudmart saga {command}: {refused}", err=True)
        raise typer.Exit(refused.exit_code) from None


def _error_line(response: httpx.Response) -> str:
    """One line from the kit's error body: status, code, message, and the saga's status or the
    first invalid parameter when the body names them."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return f"{response.status_code} {response.reason_phrase}"
    line = f"{response.status_code} {body.get('error', 'error')}: {body.get('message', '')}"
    details = body.get("details")
    if isinstance(details, dict):
        if "status" in details:
            line += f" (the saga is {details['status']})"
        errors = details.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            where = ".".join(str(part) for part in first.get("loc", [])[1:])
            line += f": {where}: {first.get('msg', '')}"
    if response.status_code == 401:
        line += " (set CLOUDMART_API_KEY)"
    return line


def _read(command: str, url: str, path: str, *, as_json: bool) -> Any:
    """What ``GET path`` answers, or ``None`` once it is printed as it came (``--json``)."""
    with _api(command, url) as api:
        answer = api.call("GET", path)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return None
    return answer


def _path(order_id: str, *rest: str) -> str:
    return "/".join(["/saga", quote(order_id, safe=""), *rest])


# -- reading -----------------------------------------------------------------------------------


@saga_app.command("list")
def list_sagas(
    status: Annotated[
        list[str] | None, typer.Option(help="Only this status (repeat for several).")
    ] = None,
    needs_operator: Annotated[
        bool | None,
        typer.Option(
            "--needs-operator/--no-needs-operator",
            help="Only sagas flagged for an operator, or only those not.",
        ),
    ] = None,
    failed_step: Annotated[
        str | None, typer.Option(help="Only sagas that compensated because this step failed.")
    ] = None,
    workflow: Annotated[str | None, typer.Option(help="Only sagas of this workflow.")] = None,
    created_after: Annotated[
        str | None, typer.Option(help="Created at or after this RFC 3339 time.")
    ] = None,
    created_before: Annotated[
        str | None, typer.Option(help="Created before this RFC 3339 time.")
    ] = None,
    order_id: Annotated[str | None, typer.Option(help="Only order ids starting with this.")] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=1, max=500, help="Sagas per page (default 50; 500 with --all)."),
    ] = None,
    cursor: Annotated[
        str | None, typer.Option(help="Continue after a page: the cursor it printed.")
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Follow every cursor: all matching sagas.")
    ] = False,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL,
) -> None:
    """Sagas newest first, a page at a time (or all of them with --all)."""
    params: dict[str, Any] = {
        "status": status or None,
        "needs_operator": None if needs_operator is None else str(needs_operator).lower(),
        "failed_step": failed_step,
        "workflow": workflow,
        "created_after": created_after,
        "created_before": created_before,
        "order_id": order_id,
        "limit": limit or (PAGE_ALL if every else 50),
        "cursor": cursor,
    }
    params = {name: value for name, value in params.items() if value is not None}
    sagas: list[dict[str, Any]] = []
    with _api("list", url) as api:
        while True:
            page = api.call("GET", "/saga", params=params)
            sagas.extend(page["sagas"])
            next_cursor = page.get("next_cursor")
            if not every or next_cursor is None:
                break
            params["cursor"] = next_cursor
    if as_json:
        typer.echo(json.dumps({"sagas": sagas, "next_cursor": next_cursor}, indent=2))
        return
    typer.echo(_table(_SAGA_COLUMNS, sagas) if sagas else "no sagas")
    if next_cursor is not None:
        typer.echo(f"more: --cursor {next_cursor}  (or --all)", err=True)


@saga_app.command("stats")
def stats(as_json: AsJson = False, url: Url = DEFAULT_URL) -> None:
    """How many sagas have each status, and how many need an operator."""
    counts = _read("stats", url, "/saga/stats", as_json=as_json)
    if counts is None:
        return
    rows = [[name, str(n)] for name, n in sorted(counts["by_status"].items())]
    rows.append(["needs an operator", str(counts["needs_operator"])])
    typer.echo(_columns(["STATUS", "SAGAS"], rows))


@saga_app.command("show")
def show(order_id: OrderId, as_json: AsJson = False, url: Url = DEFAULT_URL) -> None:
    """The saga's status, why it failed, and each step's state, attempts, times and error."""
    saga = _read("show", url, _path(order_id, "status"), as_json=as_json)
    if saga is None:
        return
    flags = [
        flag
        for flag, on in (
            ("needs an operator", saga["needs_operator"]),
            ("cancel requested", saga["cancel_requested"]),
        )
        if on
    ]
    typer.echo(f"order    {saga['order_id']}")
    typer.echo(f"saga     {saga['saga_id']}")
    typer.echo(f"status   {saga['status']}{''.join(f'  [{f}]' for f in flags)}")
    if saga.get("failure_reason"):
        typer.echo(f"reason   {saga['failure_reason']}")
    typer.echo(
        f"created  {_time(saga.get('created_at'))}   updated {_time(saga.get('updated_at'))}"
    )
    steps = saga.get("steps", [])
    if steps:
        typer.echo("")
        typer.echo(_table(_STEP_COLUMNS, steps))


@saga_app.command("history")
def history(order_id: OrderId, as_json: AsJson = False, url: Url = DEFAULT_URL) -> None:
    """Every event of the saga's history, in order."""
    events = _read("history", url, _path(order_id, "history"), as_json=as_json)
    if events is None:
        return
    typer.echo(_table(_EVENT_COLUMNS, events))


@saga_app.command("export")
def export(
    order_id: OrderId,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write here (default: <order id>.history.json)."),
    ] = None,
    url: Url = DEFAULT_URL,
) -> None:
    """Write the saga's history to a file that `cloudmart replay FILE` replays offline."""
    with _api("export", url) as api:
        events = api.call("GET", _path(order_id, "history"))
    target = out or Path(f"{order_id}.history.json")
    target.write_text(json.dumps({"workflow_id": order_id, "events": events}, indent=1) + "\n")
    typer.echo(f"{len(events)} events of order {order_id}: {target}")


# -- acting ------------------------------------------------------------------------------------


def _act(action: str, order_id: str, url: str, reason: str | None) -> None:
    """POST /saga/{order_id}/{action} (with the reason, when the action takes one)."""
    with _api(action, url) as api:
        body = None if reason is None else {"reason": reason}
        saga = api.call("POST", _path(order_id, action), body=body)
    typer.echo(f"{action} accepted: saga of order {saga['order_id']} is {saga['status']}")


@saga_app.command("retry")
def retry(order_id: OrderId, reason: Reason, url: Url = DEFAULT_URL) -> None:
    """Attempt the saga's current step or compensation again now, without its backoff."""
    _act("retry", order_id, url, reason)


@saga_app.command("resume")
def resume(order_id: OrderId, reason: Reason, url: Url = DEFAULT_URL) -> None:
    """Replay a PARKED saga with the code deployed now."""
    _act("resume", order_id, url, reason)


@saga_app.command("compensate")
def compensate(order_id: OrderId, reason: Reason, url: Url = DEFAULT_URL) -> None:
    """Undo every step that took effect, in reverse order; the saga ends FAILED."""
    _act("compensate", order_id, url, reason)


@saga_app.command("cancel")
def cancel(order_id: OrderId, url: Url = DEFAULT_URL) -> None:
    """Cancel the saga: completed steps are compensated in reverse order."""
    _act("cancel", order_id, url, None)


# -- printing ----------------------------------------------------------------------------------

_REASON_WIDTH = 60


# A table's columns: each its header and how a cell is read from one item of the API's answer.
_Columns = Sequence[tuple[str, Callable[[dict[str, Any]], str]]]

_SAGA_COLUMNS: _Columns = (
    ("ORDER ID", lambda saga: saga["order_id"]),
    ("STATUS", lambda saga: saga["status"]),
    ("OPERATOR", lambda saga: "yes" if saga["needs_operator"] else ""),
    ("CREATED (UTC)", lambda saga: _time(saga.get("created_at"))),
    ("REASON", lambda saga: _shorten(saga.get("failure_reason") or "")),
)
_STEP_COLUMNS: _Columns = (
    ("STEP", lambda step: step["name"]),
    ("STATE", lambda step: step["state"]),
    ("ATTEMPTS", lambda step: str(step["attempts"])),
    ("FINISHED", lambda step: _time(step.get("finished_at"))),
    ("COMPENSATION", lambda step: step.get("compensation") or ""),
    ("LAST ERROR", lambda step: _error(step.get("last_error"))),
)
_EVENT_COLUMNS: _Columns = (
    ("SEQ", lambda event: str(event["seq"])),
    ("TIME", lambda event: _time(event.get("created_at"))),
    ("EVENT", lambda event: event["type"]),
    ("STEP", lambda event: event.get("step") or ""),
    ("ATTEMPT", lambda event: str(event["attempt"])),
    (
        "PAYLOAD",
        lambda event: json.dumps(
            event.get("payload") or {}, ensure_ascii=False, separators=(",", ":")
        ),
    ),
)


def _table(columns: _Columns, items: list[dict[str, Any]]) -> str:
    """``items`` (sagas, steps, events) as a table of ``columns``."""
    rows = [[cell(item) for _, cell in columns] for item in items]
    return _columns([header for header, _ in columns], rows)


def _columns(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _time(value: str | None) -> str:
    """``2026-12-03T10:00:00.123456Z`` as ``2026-12-03 10:00:00`` (the API's times are UTC)."""
    if not value:
        return ""
    return value.replace("T", " ")[:19]


def _error(error: Any) -> str:
    if not isinstance(error, dict):
        return ""
    return _shorten(f"{error.get('type', '')}: {error.get('message', '')}")


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REASON_WIDTH else text[: _REASON_WIDTH - 1] + "…"
