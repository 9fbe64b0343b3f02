"""The type checker holds workflow authors to the catalogue: a step given another operation's
command model does not type-check, and a step's reply has the operation's result type.

mypy runs on a small workflow module written here, with the project's own configuration.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api as mypy_api

ROOT = Path(__file__).resolve().parents[2]

WORKFLOW = """
from contracts import catalogue as ops
from contracts.commands import OrderRef, ProcessPayment, ReserveStock
from engine import WorkflowContext, workflow


@workflow
async def scratch(ctx: WorkflowContext, order: OrderRef) -> None:
    {body}
"""


def check(body: str, tmp_path: Path) -> tuple[int, str]:
    module = tmp_path / "scratch_workflow.py"
    module.write_text(WORKFLOW.format(body=body))
    out, err, status = mypy_api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "--no-incremental",
            str(module),
        ]
    )
    return status, out + err


@pytest.mark.slow
def test_a_wrong_command_model_for_a_step_is_a_type_error(tmp_path: Path) -> None:
    status, report = check(
        "await ctx.step(ops.RESERVE_STOCK, ProcessPayment(order_id='o', customer_id=1, amount=1))",
        tmp_path,
    )
    assert status == 1, report
    assert "scratch_workflow.py:9: error" in report, report


@pytest.mark.slow
def test_a_step_returns_its_operations_result_model(tmp_path: Path) -> None:
    status, report = check(
        "reserved = await ctx.step(ops.RESERVE_STOCK, ReserveStock(order_id='o', items=[]))\n"
        "    reveal_type(reserved)",
        tmp_path,
    )
    assert status == 0, report
    assert 'Revealed type is "contracts.commands.StockReservation"' in report, report
