"""The orchestrator's operator console, ``GET /ui`` on 8005 (SPEC §8): pages over the engine.

- ``/ui``: sagas by status, those that need an operator, the dead-letter queues' depths and
  the recent failures grouped by failed step and error type;
- ``/ui/sagas``: the sagas, newest first, with the filters and cursor of ``GET /saga``, and
  bulk retry or compensate of a selection (``POST /ui/bulk``, confirmed with the count);
- ``/ui/sagas/{order_id}``: the forward steps and the compensations as two lanes
  (:mod:`services.orchestrator.console_lanes`), the operator actions that apply
  (``POST /ui/sagas/{order_id}/{action}``), the order's rows as the services see them and the
  raw history.

Every page reads through :class:`~orchestration_pattern.orchestrator.Orchestrator` (the engine's
store) and the business operations' own reads; every action goes through the same
``Orchestrator.act`` as the REST API. Access and the shared parts: :mod:`services._kit.console`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, get_args
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from activities import get_order, get_payment, get_reservations, get_shipment
from activities.errors import InvalidCommand, NotFound, OrderNotFound
from engine.adapters import amqp_names
from engine.history import CANCEL, COMPENSATE, RESUME, RETRY
from engine.listing import CURSOR_PATTERN, SagaFilter
from engine.views import SagaStatus
from orchestration_pattern.orchestrator import Orchestrator, SagaActionRefused
from services._kit import OrderIdPath, Settings, SettingsDep
from services._kit import console as kit
from services._kit.dead_letters import Pattern, gather_dead_letters
from services._kit.roster import DOMAIN_SERVICES
from services.orchestrator.api import OrchestratorDep, SagaState
from services.orchestrator.console_lanes import lanes
from services.orchestrator.listing import (
    NAME_PATTERN,
    ORDER_ID_PREFIX_PATTERN,
    parse_rfc3339,
)

__all__ = ["router"]

log = structlog.get_logger("services.console")

router = APIRouter(prefix=kit.UI_PREFIX, include_in_schema=False)

STATUSES: tuple[str, ...] = get_args(SagaState)
FINISHED = frozenset({"COMPLETED", "FAILED"})
PAGE_SIZE = 50
FLAGGED_SHOWN = 20
FAILURES_WINDOW = 200
DEAD_LETTER_TIMEOUT = 2.0
BULK_ACTIONS = {RETRY: "Retry", COMPENSATE: "Compensate"}
NAV = ((kit.UI_PREFIX, "Overview"), (f"{kit.UI_PREFIX}/sagas", "Sagas"))

_ERROR_TYPE = re.compile(r"failed after \d+ attempt\(s\): ([A-Za-z_][\w.]*)")


def _page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    current = request.url.path
    return kit.render(
        request,
        template,
        status_code,
        console_name="saga orchestrator",
        nav=NAV,
        current=current,
        **context,
    )


# overview -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FailureGroup:
    step: str | None
    error: str
    count: int
    latest: SagaStatus


@dataclasses.dataclass(frozen=True)
class DeadLetterDepths:
    depths: tuple[tuple[str, int], ...] = ()
    note: str = ""


def error_type(reason: str | None) -> str:
    """The kind of a saga's failure, from its reason: the failed step's error type
    (``PaymentFailed``), ``cancelled``, ``operator`` or the reason's first words."""
    if not reason:
        return "unknown"
    if (match := _ERROR_TYPE.search(reason)) is not None:
        return match.group(1)
    head = reason.partition(":")[0].strip()
    return head[:60] or "unknown"


def failure_groups(sagas: Sequence[SagaStatus]) -> list[FailureGroup]:
    """``sagas`` (newest first) grouped by failed step and error type, largest group first."""
    counts: Counter[tuple[str | None, str]] = Counter()
    latest: dict[tuple[str | None, str], SagaStatus] = {}
    for saga in sagas:
        key = (saga.failed_step, error_type(saga.failure_reason))
        counts[key] += 1
        latest.setdefault(key, saga)
    return [
        FailureGroup(step, error, count, latest[(step, error)])
        for (step, error), count in counts.most_common()
    ]


async def dead_letter_depths(settings: Settings) -> DeadLetterDepths:
    """How many messages each service's dead-letter queue holds (what ``cloudmart
    dead-letters list`` reads), or why that cannot be said now."""
    if settings.embedded or not settings.rabbitmq_url:
        return DeadLetterDepths(note="Embedded: commands are calls in this process; no queues.")
    try:
        async with asyncio.timeout(DEAD_LETTER_TIMEOUT):
            letters, unreachable = await gather_dead_letters(
                settings, (Pattern.orchestration,), DOMAIN_SERVICES, None, redrive=False
            )
    except TimeoutError:
        log.warning("console.dead_letters_unreadable", error="timeout")
        return DeadLetterDepths(note="RabbitMQ did not answer in time: the depths are unknown.")
    if unreachable:
        log.warning("console.dead_letters_unreadable", error=str(unreachable[0]))
        return DeadLetterDepths(note="RabbitMQ did not answer: the depths are unknown.")
    held = Counter(letter.source for letter in letters)
    queues = [amqp_names.dead_letter_queue(settings.namespace, s) for s in DOMAIN_SERVICES]
    return DeadLetterDepths(depths=tuple((queue, held[queue]) for queue in queues))


@router.get("")
async def overview(
    request: Request, orchestrator: OrchestratorDep, settings: SettingsDep
) -> HTMLResponse:
    counts, flagged, failed, dead = await asyncio.gather(
        orchestrator.counts(),
        orchestrator.list(SagaFilter(needs_operator=True), cursor=None, limit=FLAGGED_SHOWN),
        orchestrator.list(
            SagaFilter(statuses=("FAILED", "COMPENSATION_STARTED")),
            cursor=None,
            limit=FAILURES_WINDOW,
        ),
        dead_letter_depths(settings),
    )
    by_status = [(s, counts.by_status[s]) for s in STATUSES if counts.by_status.get(s)]
    return _page(
        request,
        "overview.html",
        by_status=by_status,
        total=sum(counts.by_status.values()),
        needs_operator=counts.needs_operator,
        flagged=flagged.sagas,
        failures=failure_groups(failed.sagas),
        failures_window=FAILURES_WINDOW,
        dead_letters=dead,
    )


# the list -------------------------------------------------------------------------------------


def _given(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def _checked(name: str, value: str | None, pattern: str) -> str | None:
    value = _given(value)
    if value is not None and re.fullmatch(pattern, value) is None:
        raise InvalidCommand(f"{name}: {value!r} does not match {pattern}", field=name)
    return value


def _time(name: str, value: str | None) -> datetime | None:
    value = _given(value)
    if value is None:
        return None
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise InvalidCommand(f"{name}: {exc}", field=name) from exc


def saga_filter(
    statuses: Sequence[str],
    needs_operator: str | None,
    failed_step: str | None,
    created_after: str | None,
    created_before: str | None,
    order_id: str | None,
) -> SagaFilter:
    """The list's filter from the form's fields (empty fields are no filter); 422 otherwise."""
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise InvalidCommand(f"status: {unknown[0]!r} is not one of {', '.join(STATUSES)}")
    flag = _given(needs_operator)
    if flag not in (None, "true", "false"):
        raise InvalidCommand("needs_operator: expected true, false or nothing")
    return SagaFilter(
        statuses=tuple(statuses),
        needs_operator=None if flag is None else flag == "true",
        failed_step=_checked("failed_step", failed_step, NAME_PATTERN),
        created_after=_time("created_after", created_after),
        created_before=_time("created_before", created_before),
        order_id_prefix=_checked("order_id", order_id, ORDER_ID_PREFIX_PATTERN),
    )


TextQuery = Annotated[str | None, Query(max_length=200)]


@router.get("/sagas")
async def saga_list(
    request: Request,
    orchestrator: OrchestratorDep,
    statuses: Annotated[list[str] | None, Query(alias="status")] = None,
    needs_operator: TextQuery = None,
    failed_step: TextQuery = None,
    created_after: TextQuery = None,
    created_before: TextQuery = None,
    order_id: TextQuery = None,
    cursor: TextQuery = None,
) -> HTMLResponse:
    where = saga_filter(
        statuses or (), needs_operator, failed_step, created_after, created_before, order_id
    )
    cursor = _checked("cursor", cursor, CURSOR_PATTERN)
    page = await orchestrator.list(where, cursor=cursor, limit=PAGE_SIZE)
    fields = {
        "needs_operator": _given(needs_operator) or "",
        "failed_step": _given(failed_step) or "",
        "created_after": _given(created_after) or "",
        "created_before": _given(created_before) or "",
        "order_id": _given(order_id) or "",
    }
    query = [("status", s) for s in where.statuses] + [(k, v) for k, v in fields.items() if v]
    base = f"{kit.UI_PREFIX}/sagas"
    return _page(
        request,
        "sagas.html",
        sagas=page.sagas,
        all_statuses=STATUSES,
        filters={"statuses": where.statuses, **fields},
        cursor=cursor,
        first_url=f"{base}?{urlencode(query)}",
        next_url=(
            f"{base}?{urlencode([*query, ('cursor', page.next_cursor)])}"
            if page.next_cursor
            else None
        ),
        # The first page follows the sagas as they run; older pages stay put.
        live=cursor is None,
    )


@router.post("/bulk")
async def bulk(request: Request, orchestrator: OrchestratorDep) -> HTMLResponse:
    """A bulk action on the selected sagas: first a confirmation naming how many it touches,
    then (``confirm=yes`` with a reason) the action on each, and what each answered."""
    form = await kit.form_fields(request)
    action = (form.get("action") or [""])[0]
    if action not in BULK_ACTIONS:
        raise InvalidCommand(f"action: expected one of {', '.join(BULK_ACTIONS)}")
    order_ids = list(dict.fromkeys(form.get("order_id", [])))
    verb = BULK_ACTIONS[action]
    if (form.get("confirm") or [""])[0] != "yes":
        return _page(
            request, "bulk.html", action=action, verb=verb, order_ids=order_ids, results=None
        )
    reason = _reason(form)
    results: list[tuple[str, bool, str]] = []
    for order_id in order_ids:
        try:
            saga = await orchestrator.act(order_id, action, reason)
        except (SagaActionRefused, NotFound) as exc:
            results.append((order_id, False, f"refused: {exc}"))
        else:
            results.append((order_id, True, f"accepted ({saga.status})"))
    accepted = sum(ok for _, ok, _ in results)
    return _page(request, "bulk.html", action=action, verb=verb, results=results, accepted=accepted)


def _reason(form: dict[str, list[str]]) -> str:
    reason = " ".join((form.get("reason") or [""])[0].split())
    if not reason:
        raise InvalidCommand("reason: an operator action needs a reason", field="reason")
    if len(reason) > 500:
        raise InvalidCommand("reason: at most 500 characters", field="reason")
    return reason


# one saga -------------------------------------------------------------------------------------


def applicable_actions(saga: SagaStatus) -> dict[str, Any]:
    """The operator actions the saga's status admits (SPEC §8); the engine still decides."""
    reasoned: list[str] = []
    if saga.status == "PARKED":
        reasoned = [RESUME, COMPENSATE]
    elif saga.status not in FINISHED:
        reasoned = [RETRY]
        if not saga.past_pivot and saga.status != "COMPENSATION_STARTED":
            reasoned.append(COMPENSATE)
    cancel = (
        saga.status not in FINISHED
        and not saga.past_pivot
        and saga.status != "COMPENSATION_STARTED"
    )
    return {"reasoned": reasoned, "cancel": cancel}


async def order_rows(orchestrator: Orchestrator, order_id: str) -> dict[str, Any]:
    """The order, its payment, shipment and reservations, read as each service reads them."""
    db = orchestrator.db

    async def maybe(read: Any) -> Any:
        try:
            return await read(db, order_id)
        except (NotFound, OrderNotFound):
            return None

    order, payment, shipment, reservations = await asyncio.gather(
        maybe(get_order), maybe(get_payment), maybe(get_shipment), get_reservations(db, order_id)
    )
    return {"order": order, "payment": payment, "shipment": shipment, "reservations": reservations}


async def _saga_page(
    request: Request,
    orchestrator: Orchestrator,
    order_id: str,
    *,
    notice: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    saga, history = await asyncio.gather(
        orchestrator.status(order_id), orchestrator.history(order_id)
    )
    drawn = lanes(history)
    return _page(
        request,
        "saga.html",
        status_code,
        saga=saga,
        forward=drawn.forward,
        compensations=drawn.compensations,
        columns=max(len(drawn.forward), 1),
        actions=applicable_actions(saga),
        rows=await order_rows(orchestrator, order_id),
        history=history,
        live=saga.status not in FINISHED,
        notice=notice,
    )


@router.get("/sagas/{order_id}")
async def saga_page(
    request: Request, order_id: OrderIdPath, orchestrator: OrchestratorDep
) -> HTMLResponse:
    return await _saga_page(request, orchestrator, order_id)


@router.post("/sagas/{order_id}/{action}")
async def saga_action(
    request: Request, order_id: OrderIdPath, action: str, orchestrator: OrchestratorDep
) -> Response:
    """An operator action from the saga's page; back to the page (303) once accepted, the page
    with the refusal (409) otherwise."""
    if action not in (RETRY, RESUME, COMPENSATE, CANCEL):
        raise NotFound(f"no action {action!r}", action=action)
    form = await kit.form_fields(request)
    reason = "cancelled" if action == CANCEL else _reason(form)
    try:
        await orchestrator.act(order_id, action, reason)
    except SagaActionRefused as exc:
        return await _saga_page(
            request, orchestrator, order_id, notice=f"Refused: {exc}", status_code=409
        )
    return RedirectResponse(f"{kit.UI_PREFIX}/sagas/{order_id}", status_code=303)
