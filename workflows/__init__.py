"""Workflow definitions: deterministic async functions over ``ctx`` only (no I/O)."""

from __future__ import annotations

from workflows.order_saga import (
    ORDER_WORKFLOW,
    place_order,
    place_order_declarative,
    workflow_from_definition,
)

__all__ = ["ORDER_WORKFLOW", "place_order", "place_order_declarative", "workflow_from_definition"]
