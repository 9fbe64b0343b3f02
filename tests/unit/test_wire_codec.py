"""The AMQP wire's codec (orjson): every command and reply of the catalogue goes through it and
comes back as the same model, and it reads the standard library's JSON as its own."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel

from contracts.catalogue import CATALOGUE, Operation
from contracts.commands import Compensation, OrderRef
from contracts.examples import ADDRESS, order_replies
from engine.adapters.amqp_link import decode, encode

ORDER_ID = "7c0e9a58-4f0b-4bde-9a7e-2f4c2bd1f6a1"
# Every field an input of the catalogue takes, as the order saga fills it (non-ASCII
# included: the wire carries UTF-8, the standard library escaped it).
FIELDS: dict[str, Any] = {
    "order_id": ORDER_ID,
    "customer_id": 1,
    "items": [{"book_id": 1, "quantity": 2}, {"book_id": 3, "quantity": 1}],
    "shipping_address": {**ADDRESS.model_dump(), "name": "花子 Ünïcødé"},
    "address": {**ADDRESS.model_dump(), "line1": "1-2-3 Shibuya 渋谷"},
    "amount": Decimal("12.50"),
    "reason": "shipping failed",
}


def _command(op: Operation[Any, Any]) -> BaseModel:
    return op.input.model_validate({k: v for k, v in FIELDS.items() if k in op.input.model_fields})


def _reply(op: Operation[Any, Any]) -> BaseModel:
    replies = order_replies()
    if op.name in replies:
        return op.result.model_validate(replies[op.name]({"order_id": ORDER_ID}))
    assert op.result is Compensation, op.name
    return Compensation.model_validate(
        {
            "order_id": ORDER_ID,
            "operation": op.name,
            "undone": True,
            "amount": "12.50",
            "items": FIELDS["items"],
        }
    )


@pytest.mark.parametrize("op", CATALOGUE, ids=lambda op: op.name)
def test_every_command_and_reply_round_trips_through_the_wire_codec(
    op: Operation[Any, Any],
) -> None:
    for model in (_command(op), _reply(op)):
        data = model.model_dump(mode="json")
        body = encode({"ok": data})
        assert decode(body) == {"ok": data}
        assert type(model).model_validate(decode(body)["ok"]) == model
        # What the other end may still send: the standard library's JSON, escapes and all.
        assert decode(json.dumps({"ok": data}).encode()) == {"ok": data}
        assert json.loads(body) == {"ok": data}


def test_a_batch_body_round_trips() -> None:
    commands = [
        {"correlation_id": str(n), "headers": {"method": "cancel_order"}, "payload": p}
        for n, p in enumerate(
            OrderRef(order_id=f"{ORDER_ID[:-1]}{n}").model_dump(mode="json") for n in range(3)
        )
    ]
    assert decode(encode({"commands": commands})) == {"commands": commands}


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe", b"NaN"])
def test_a_body_that_is_not_json_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        decode(body)
