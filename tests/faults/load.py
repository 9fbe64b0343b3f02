"""Steady order load for fault scenarios, as a careful client sends it.

:class:`Load` starts one order per ``interval`` seconds, each with an ``Idempotency-Key`` of
its own, and retries a start with the same key while the system answers 503 or 409 or the
connection fails — so an outage delays an order but never duplicates or drops it (a start
still unanswered after ``give_up_after`` seconds fails the test). Every answer is recorded:
:attr:`Load.unavailable` keeps the 503 bodies, :attr:`Load.unexpected` every answer a client
must never get (a 500, a 503 without a JSON error body...).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import uuid
from typing import Any

import httpx
from conftest import until


@dataclasses.dataclass
class Answers:
    """What a client saw: status counts, 503 bodies and answers that break the contract."""

    statuses: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    unavailable: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    transport_errors: int = 0

    def record(self, response: httpx.Response) -> None:
        """Count ``response``; a 5xx other than a JSON 503 is unexpected."""
        self.statuses[response.status_code] += 1
        if response.status_code < 500:
            return
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code == 503 and isinstance(body, dict) and "error" in body:
            self.unavailable.append(body)
        else:
            request = response.request
            self.unexpected.append(
                f"{request.method} {request.url.path}: {response.status_code} {response.text[:200]}"
            )


@dataclasses.dataclass
class Load:
    """``bodies`` started through ``POST path`` at ``interval`` s apart (see the module doc)."""

    api: httpx.AsyncClient
    path: str
    bodies: list[dict[str, Any]]
    interval: float
    give_up_after: float = 120.0
    answers: Answers = dataclasses.field(default_factory=Answers)
    accepted: list[str] = dataclasses.field(default_factory=list)
    refused: list[str] = dataclasses.field(default_factory=list)

    async def run(self) -> list[str]:
        """Start every order; the order ids accepted, once every start has been answered."""
        starts = []
        for body in self.bodies:
            starts.append(asyncio.create_task(self._start(body)))
            await asyncio.sleep(self.interval)  # the load's pace
        await asyncio.gather(*starts)
        return self.accepted

    async def _start(self, body: dict[str, Any]) -> None:
        key = f"infra-{uuid.uuid4()}"

        async def answered() -> bool:
            """One attempt: whether the start got its final answer (a back-off follows if not)."""
            try:
                response = await self.api.post(
                    self.path, json=body, headers={"Idempotency-Key": key}
                )
            except httpx.TransportError:
                self.answers.transport_errors += 1
                return False
            self.answers.record(response)
            if response.status_code in (200, 202):
                self.accepted.append(str(response.json()["order_id"]))
            elif response.status_code not in (409, 503):
                self.refused.append(f"{response.status_code} {response.text[:200]}")
            return response.status_code not in (409, 503)

        # a client's back-off of 0.25 s between attempts
        await until(
            answered,
            timeout=self.give_up_after,
            interval=0.25,
            what=f"start {key} answered",
        )
