"""The orchestrator's REST API: start, follow and cancel order sagas, and the operator's
actions on them (retry, resume, compensate; SPEC §8)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status
from pydantic import BaseModel, Field

from activities.errors import (
    BookNotFound,
    CustomerNotFound,
    IdempotencyKeyReused,
    SagaBacklogFull,
)
from contracts.commands import Line, PlaceOrder, UtcTimestamp
from engine import SagaStatus
from engine.history import CANCEL, COMPENSATE, RESUME, RETRY
from engine.listing import SagaFilter
from orchestration_pattern.orchestrator import (
    Orchestrator,
    SagaActionRefused,
    SagaFinished,
    SagaUnknown,
)
from services._kit import IdempotencyKeyHeader, OrderIdPath, error_responses
from services.orchestrator.listing import (
    CreatedAfterQuery,
    CreatedBeforeQuery,
    CursorQuery,
    FailedStepQuery,
    LimitQuery,
    NeedsOperatorQuery,
    OrderIdPrefixQuery,
    WorkflowQuery,
)

router = APIRouter(prefix="/saga", tags=["saga"])


SagaState = Literal[
    "STARTED",
    "ORDER_CREATED",
    "STOCK_RESERVED",
    "PAYMENT_COMPLETED",
    "SHIPPING_ARRANGED",
    "COMPLETED",
    "COMPENSATION_STARTED",
    "FAILED",
    "PARKED",
]


async def orchestrator_of(request: Request) -> Orchestrator:
    orchestrator: Orchestrator = request.app.state.orchestrator
    return orchestrator


OrchestratorDep = Annotated[Orchestrator, Depends(orchestrator_of)]


class SagaStarted(BaseModel):
    order_id: str
    saga_id: str
    status: SagaState


class StepView(BaseModel):
    name: str
    state: str = Field(
        description="SCHEDULED, RETRYING, COMPLETED, FAILED, COMPENSATING, COMPENSATED"
    )
    attempts: int
    scheduled_at: UtcTimestamp | None
    finished_at: UtcTimestamp | None
    last_error: dict[str, Any] | None
    compensation: str | None
    compensation_attempts: int


class SagaView(BaseModel):
    order_id: str
    saga_id: str
    status: SagaState
    failure_reason: str | None = Field(
        description="Why the saga compensated: the failed step and its error, or 'cancelled'."
    )
    needs_operator: bool = Field(
        description="A compensation, or a step past the pivot, keeps failing, or the saga is "
        "parked: look at it."
    )
    cancel_requested: bool
    failed_step: str | None = Field(
        description="The step whose failure made the saga compensate, if one did."
    )
    past_pivot: bool = Field(
        description="The pivot step completed: the saga only goes forward (cancel and "
        "compensate answer 409)."
    )
    created_at: UtcTimestamp | None
    updated_at: UtcTimestamp | None
    steps: list[StepView] = Field(default_factory=list)

    @classmethod
    def of(cls, saga: SagaStatus) -> SagaView:
        return cls(
            order_id=saga.workflow_id,
            saga_id=saga.saga_id,
            status=saga.status,
            failure_reason=saga.failure_reason,
            needs_operator=saga.needs_operator,
            cancel_requested=saga.cancel_requested,
            failed_step=saga.failed_step,
            past_pivot=saga.past_pivot,
            created_at=saga.created_at,
            updated_at=saga.updated_at,
            steps=[StepView.model_validate(step, from_attributes=True) for step in saga.steps],
        )


class HistoryEvent(BaseModel):
    seq: int
    type: str
    position: int | None
    step: str | None
    attempt: int
    payload: dict[str, Any]
    created_at: UtcTimestamp | None
    owner: str | None
    version: int


class SagaPage(BaseModel):
    sagas: list[SagaView] = Field(description="Newest first, without their steps.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; `null` on the last page."
    )


class SagaStats(BaseModel):
    by_status: dict[str, int] = Field(
        description="How many sagas have each status (statuses no saga has are left out)."
    )
    needs_operator: int = Field(description="How many sagas are flagged for an operator.")


@router.post(
    "/start",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SagaStarted,
    responses={
        200: {"model": SagaStarted, "description": "Same Idempotency-Key and body: that saga"},
        **error_responses(CustomerNotFound, BookNotFound, IdempotencyKeyReused, SagaBacklogFull),
    },
    summary="Start an order saga; returns at once with the order id (202 + Location)",
)
async def start_saga(
    order: PlaceOrder,
    orchestrator: OrchestratorDep,
    response: Response,
    idempotency_key: IdempotencyKeyHeader = None,
) -> SagaStarted:
    handle = await orchestrator.start(order, idempotency_key=idempotency_key)
    response.headers["Location"] = f"/saga/{handle.workflow_id}/status"
    if not handle.created:
        response.status_code = status.HTTP_200_OK
    return SagaStarted(order_id=handle.workflow_id, saga_id=handle.saga_id, status=handle.status)


# Before every /{order_id}... route: Starlette takes the first route that matches, and a
# one-segment /{order_id} route above this one would answer /saga/stats.
@router.get(
    "/stats",
    response_model=SagaStats,
    summary="How many sagas have each status, and how many need an operator",
)
async def saga_stats(orchestrator: OrchestratorDep) -> SagaStats:
    counts = await orchestrator.counts()
    return SagaStats(by_status=dict(counts.by_status), needs_operator=counts.needs_operator)


@router.get(
    "/{order_id}/status",
    response_model=SagaView,
    responses=error_responses(SagaUnknown),
    summary="The saga's status, its steps and why it failed",
)
async def saga_status(
    order_id: OrderIdPath,
    orchestrator: OrchestratorDep,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=30,
            description="Long-poll: answer once the saga finished, or after this many seconds.",
        ),
    ] = 0,
) -> SagaView:
    return SagaView.of(await orchestrator.status(order_id, wait=wait))


class OperatorReason(BaseModel):
    """Why the operator acts; recorded in the saga's history with the action."""

    model_config = {"extra": "forbid"}
    reason: Line


_ACTION_ERRORS = error_responses(SagaUnknown, SagaFinished, SagaActionRefused)


@router.post(
    "/{order_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SagaView,
    responses=_ACTION_ERRORS,
    summary="Cancel: completed steps are compensated in reverse order (409 when finished or "
    "past the pivot)",
)
async def cancel_saga(order_id: OrderIdPath, orchestrator: OrchestratorDep) -> SagaView:
    return SagaView.of(await orchestrator.act(order_id, CANCEL, "cancelled"))


# The operator's actions that take a reason (SPEC §8), each a POST on the saga.
_ACTIONS = {
    RETRY: "Attempt the current step or compensation again now (409 unless running)",
    RESUME: "Replay a PARKED saga with the code deployed now (409 unless parked)",
    COMPENSATE: "Undo what took effect, in reverse order, and end FAILED (a parked saga, or "
    "one running before its pivot)",
}


def _add_action(action: str, summary: str) -> None:
    async def act(
        order_id: OrderIdPath, body: OperatorReason, orchestrator: OrchestratorDep
    ) -> SagaView:
        return SagaView.of(await orchestrator.act(order_id, action, body.reason))

    act.__name__ = f"{action}_saga"
    router.add_api_route(
        f"/{{order_id}}/{action}",
        act,
        methods=["POST"],
        status_code=status.HTTP_202_ACCEPTED,
        response_model=SagaView,
        responses=_ACTION_ERRORS,
        summary=summary,
    )


for _action, _summary in _ACTIONS.items():
    _add_action(_action, _summary)


@router.get(
    "/{order_id}/history",
    response_model=list[HistoryEvent],
    responses=error_responses(SagaUnknown),
    summary="Every event of the saga's history, in order",
)
async def saga_history(order_id: OrderIdPath, orchestrator: OrchestratorDep) -> list[HistoryEvent]:
    events = await orchestrator.history(order_id)
    return [HistoryEvent.model_validate(event, from_attributes=True) for event in events]


@router.get(
    "",
    response_model=SagaPage,
    summary=(
        "A page of sagas, newest first, by status, operator flag, failed step, workflow, time "
        "or order id"
    ),
)
async def list_sagas(
    orchestrator: OrchestratorDep,
    statuses: Annotated[
        list[SagaState] | None,
        Query(alias="status", description="Only sagas with one of these statuses (repeatable)."),
    ] = None,
    needs_operator: NeedsOperatorQuery = None,
    failed_step: FailedStepQuery = None,
    workflow: WorkflowQuery = None,
    created_after: CreatedAfterQuery = None,
    created_before: CreatedBeforeQuery = None,
    order_id: OrderIdPrefixQuery = None,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> SagaPage:
    where = SagaFilter(
        statuses=tuple(statuses or ()),
        needs_operator=needs_operator,
        failed_step=failed_step,
        workflow=workflow,
        created_after=created_after,
        created_before=created_before,
        order_id_prefix=order_id,
    )
    page = await orchestrator.list(where, cursor=cursor, limit=limit)
    return SagaPage(sagas=[SagaView.of(s) for s in page.sagas], next_cursor=page.next_cursor)
