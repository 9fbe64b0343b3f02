"""Failure points: deliberate crashes and errors that chaos tests arm, never reachable in prod.

One point at a time is armed by ``CLOUDMART_FAILPOINT`` (the settings' ``failpoint``), which
:class:`~services._kit.settings.Settings` refuses outside ``CLOUDMART_ENV=test`` — and so does
:func:`arm`. The app factory arms it once per process. Code at a dangerous instant asks
``hit(point, **where)``: nothing happens unless the armed point has that name and matches
``where``. With nothing armed, ``hit`` costs one ``None`` check.

==============================================  ==============================================
spelling                                        what happens
==============================================  ==============================================
``crash_before_ack:<service>``                  choreography: SIGKILL after an event handler
                                                committed, before the XACK
``crash_before_publish:<service>``              choreography: SIGKILL after the relay locked
                                                committed outbox rows, before it published
                                                them
``crash_after_history:<N>``                     orchestrator: SIGKILL right after the N-th
                                                history write (a saga's create or append) it
                                                committed
``crash_after_history:<event type>:<N>``        the same, counting only writes that hold an
                                                event of that type (``CompensationStarted``)
``freeze_before_history:[<event type>:]<N>``    orchestrator: SIGSTOP right before the N-th
                                                history write (of that type) it is about to
                                                commit; after SIGCONT the write goes ahead,
                                                late: a zombie's write
``crash_before_reply:<service>[:<N>]``          a service: SIGKILL after the N-th command's
                                                operation committed (default the 1st), before
                                                its reply is published and the command acked
``fail_compensation:<operation>:<seconds>``     a service: ``<operation>``
                                                (``payment.cancel_payment``) answers a
                                                transient :class:`FailpointError` for the
                                                first ``<seconds>`` after arming, so the
                                                orchestrator keeps retrying it
``poison:<service>``                            a service: every command (orchestration) or
                                                event (choreography) it handles raises
                                                :class:`FailpointPoison` before its operation
                                                runs — neither a business answer nor an
                                                infrastructure fault, so the message is
                                                dead-lettered after its delivery limit
==============================================  ==============================================
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from services._kit.roster import SERVICE_NAMES

__all__ = [
    "Failpoint",
    "FailpointError",
    "FailpointPoison",
    "arm",
    "armed",
    "event_hook",
    "history_hook",
    "hit",
    "parse",
]

log = structlog.get_logger("services.failpoints")

_Hook = TypeVar("_Hook", bound=Callable[..., None])

# point -> the name of the ``where`` value its target is compared with
_TARGETS = {
    "crash_before_ack": "service",
    "crash_before_publish": "service",
    "crash_after_history": "events",
    "freeze_before_history": "events",
    "crash_before_reply": "service",
    "fail_compensation": "operation",
    "poison": "service",
}


class FailpointError(Exception):
    """The transient failure ``fail_compensation`` injects; crosses the wire as retryable."""

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "message": str(self),
            "non_retryable": False,
            "details": {},
        }


class FailpointPoison(Exception):
    """What ``poison`` raises: a failure that is no answer (no ``to_wire``) and no fault."""


@dataclass
class Failpoint:
    """One parsed ``CLOUDMART_FAILPOINT``: ``point``, an optional ``target``, ``count`` (the
    N-th matching hit acts), ``seconds`` (``fail_compensation``'s window)."""

    point: str
    target: str | None = None
    count: int = 1
    seconds: float = 0.0
    armed_at: float = field(default_factory=lambda: time.monotonic())
    hits: int = 0

    def matches(self, point: str, where: dict[str, Any]) -> bool:
        if point != self.point:
            return False
        if self.target is None:
            return True
        value = where.get(_TARGETS[point])
        if isinstance(value, list | tuple | set | frozenset):
            return self.target in value
        return value == self.target

    def act(self) -> None:
        if self.point == "poison":
            raise FailpointPoison(f"failpoint {self}: this message cannot succeed here")
        if self.point == "fail_compensation":
            if time.monotonic() - self.armed_at < self.seconds:
                raise FailpointError(f"failpoint {self}: failing for {self.seconds}s")
            return
        self.hits += 1
        if self.hits == self.count:
            freeze = self.point.startswith("freeze_")
            log.warning("failpoint.freeze" if freeze else "failpoint.crash", failpoint=str(self))
            os.kill(os.getpid(), signal.SIGSTOP if freeze else signal.SIGKILL)

    def __str__(self) -> str:
        parts = [self.point, *([self.target] if self.target else [])]
        if self.point == "fail_compensation":
            parts.append(f"{self.seconds:g}")
        elif self.point in ("crash_after_history", "freeze_before_history", "crash_before_reply"):
            parts.append(str(self.count))
        return ":".join(parts)


def _positive(text: str, spec: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"failpoint {spec!r}: {text!r} is not a count >= 1")
    return int(text)


def parse(spec: str) -> Failpoint:
    """Read one failpoint spelling (see the module docstring); ``ValueError`` if unknown."""
    point, *args = spec.strip().split(":")
    if point in ("crash_before_ack", "crash_before_publish", "poison"):
        if len(args) != 1 or args[0] not in SERVICE_NAMES:
            raise ValueError(f"failpoint {spec!r}: expected {point}:<service>")
        return Failpoint(point, args[0])
    if point in ("crash_after_history", "freeze_before_history"):
        if len(args) == 1:
            return Failpoint(point, None, _positive(args[0], spec))
        if len(args) == 2 and args[0].isidentifier():
            return Failpoint(point, args[0], _positive(args[1], spec))
        raise ValueError(f"failpoint {spec!r}: expected {point}:[<event type>:]<N>")
    if point == "crash_before_reply":
        if not 1 <= len(args) <= 2 or args[0] not in SERVICE_NAMES:
            raise ValueError(f"failpoint {spec!r}: expected {point}:<service>[:<N>]")
        return Failpoint(point, args[0], _positive(args[1], spec) if len(args) == 2 else 1)
    if point == "fail_compensation":
        if len(args) != 2 or "." not in args[0]:
            raise ValueError(f"failpoint {spec!r}: expected {point}:<service.operation>:<seconds>")
        try:
            seconds = float(args[1])
        except ValueError:
            seconds = -1.0
        if not seconds > 0:
            raise ValueError(f"failpoint {spec!r}: {args[1]!r} is not a number of seconds > 0")
        return Failpoint(point, args[0], seconds=seconds)
    raise ValueError(f"unknown failpoint {spec!r}")


_armed: Failpoint | None = None


def arm(spec: str | None, *, env: str) -> Failpoint | None:
    """Arm ``spec`` for this process (``None`` disarms); refused unless ``env == "test"``."""
    global _armed
    if spec and env != "test":
        raise ValueError("CLOUDMART_FAILPOINT is refused outside CLOUDMART_ENV=test")
    _armed = parse(spec) if spec else None
    if _armed is not None:
        log.warning("failpoint.armed", failpoint=str(_armed))
    return _armed


def armed(point: str, **where: Any) -> bool:
    """Whether a :func:`hit` of ``point`` at ``where`` would match the armed failpoint;
    without ``where``, whether ``point`` is the armed one at all."""
    if _armed is None:
        return False
    return _armed.point == point if not where else _armed.matches(point, where)


def history_hook() -> Callable[[str, list[str]], None] | None:
    """The orchestrator's history hook (:data:`orchestration_pattern.orchestrator.HistoryHook`)
    when a history failure point is armed; ``None`` otherwise, so no write pays for a detour."""
    return _if_armed(_hit_history, ("crash_after_history", "freeze_before_history"))


def event_hook(point: str, service: str) -> Callable[[Any], None] | None:
    """A hook for ``point`` in ``service``'s event consumer or outbox relay (called with the
    event or batch it stands before) when the point is armed there; ``None`` otherwise."""
    return _if_armed(lambda _: hit(point, service=service), (point,), service=service)


def _if_armed(hook: _Hook, points: tuple[str, ...], **where: Any) -> _Hook | None:
    """``hook`` when one of ``points`` is armed at ``where``: the code handed ``None`` instead
    pays nothing for a failure point that cannot fire."""
    return hook if any(armed(point, **where) for point in points) else None


def _hit_history(point: str, event_types: list[str]) -> None:
    hit(point, events=event_types)


def hit(point: str, **where: Any) -> None:
    """The code reached ``point``; act if the armed failpoint is this one (crash or raise)."""
    if _armed is None:
        return
    if _armed.matches(point, where):
        _armed.act()
