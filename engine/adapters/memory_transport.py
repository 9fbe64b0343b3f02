"""An in-process :class:`~engine.ports.Transport` over a dict of handlers, with fault injection.

Handlers are ``async def handler(payload: dict) -> dict`` keyed ``"service.method"``. A handler
that raises is mapped to the wire error ``{"type": type(exc).__name__, "message": str(exc),
"non_retryable": exc.non_retryable (default False), "details": exc.details (default {})}`` and
the caller gets :class:`~engine.errors.RemoteError`, exactly as over a broker. Payloads and
replies go through JSON, so a handler never shares objects with the caller. The idempotency key
and headers of the request being handled are available to a handler through
:func:`current_request`.

Faults (tests): ``transport.inject("service.method", Fault(...))`` applies to the next
``times`` requests: ``drop_reply`` (the handler runs, the caller gets ``StepTimeout``),
``delay`` (delivery waits ``seconds`` on the transport's clock; past the request's timeout the
caller gets ``StepTimeout`` and the handler still runs later, a late command), ``duplicate``
(delivered twice), ``transient`` (not delivered; ``TransportError``).
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from engine.errors import RemoteError, StepTimeout, TransportError
from engine.ports import Clock

__all__ = ["Fault", "Handler", "InMemoryTransport", "RequestInfo", "current_request"]

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class RequestInfo:
    service: str
    method: str
    idempotency_key: str
    headers: dict[str, str]


_current: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar(
    "cloudmart_engine_request", default=None
)


def current_request() -> RequestInfo | None:
    """The request a handler is serving (its idempotency key and headers)."""
    return _current.get()


@dataclasses.dataclass
class Fault:
    kind: Literal["drop_reply", "delay", "duplicate", "transient"]
    times: int = 1
    seconds: float = 0.0


class InMemoryTransport:
    """Request/reply by direct call; ``calls`` records the latest 10,000 deliveries."""

    def __init__(self, handlers: dict[str, Handler], *, clock: Clock | None = None) -> None:
        self._handlers = dict(handlers)
        self._clock = clock
        self._faults: dict[str, list[Fault]] = {}
        self._late: set[asyncio.Task[Any]] = set()
        # The latest deliveries, for tests; bounded so a long embedded run does not grow.
        self.calls: deque[RequestInfo] = deque(maxlen=10_000)

    def inject(self, target: str, fault: Fault) -> None:
        """Queue ``fault`` for the next requests to ``target`` ("service.method")."""
        self._faults.setdefault(target, []).append(fault)

    async def drain(self) -> None:
        """Wait for late (delayed past their timeout) deliveries to finish."""
        while self._late:
            await asyncio.gather(*list(self._late), return_exceptions=True)

    async def request(
        self,
        service: str,
        method: str,
        payload: dict[str, Any],
        *,
        timeout: float,
        idempotency_key: str,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        target = f"{service}.{method}"
        handler = self._handlers.get(target)
        if handler is None:
            raise RemoteError(
                "UnknownCommand", f"no handler for {target}", non_retryable=True, details={}
            )
        info = RequestInfo(service, method, idempotency_key, dict(headers or {}))
        body = json.dumps(payload)
        fault = self._take_fault(target)
        if fault is None:
            try:
                async with asyncio.timeout(timeout):
                    return await self._deliver(handler, info, body)
            except TimeoutError:
                raise StepTimeout(f"no reply from {target} within {timeout}s") from None
        if fault.kind == "transient":
            raise TransportError(f"injected transport failure on {target}")
        if fault.kind == "duplicate":
            await self._deliver(handler, info, body, swallow=True)
            return await self._deliver(handler, info, body)
        if fault.kind == "drop_reply":
            await self._deliver(handler, info, body, swallow=True)
            raise StepTimeout(f"reply from {target} lost")
        # delay
        if fault.seconds < timeout:
            await self._sleep(fault.seconds)
            return await self._deliver(handler, info, body)
        late = asyncio.ensure_future(self._late_delivery(handler, info, body, fault.seconds))
        self._late.add(late)
        late.add_done_callback(self._late.discard)
        await self._sleep(timeout)
        raise StepTimeout(f"no reply from {target} within {timeout}s")

    async def _late_delivery(
        self, handler: Handler, info: RequestInfo, body: str, delay: float
    ) -> None:
        await self._sleep(delay)
        await self._deliver(handler, info, body, swallow=True)

    async def _deliver(
        self, handler: Handler, info: RequestInfo, body: str, *, swallow: bool = False
    ) -> dict[str, Any]:
        self.calls.append(info)
        token = _current.set(info)
        try:
            reply = await handler(json.loads(body))
        except Exception as exc:  # the wire mapping: any handler exception becomes an error reply
            if swallow:
                return {}
            raise RemoteError(
                type(exc).__name__,
                getattr(exc, "message", None) or str(exc),
                non_retryable=bool(getattr(exc, "non_retryable", False)),
                details=dict(getattr(exc, "details", None) or {}),
            ) from None
        finally:
            _current.reset(token)
        copied: dict[str, Any] = json.loads(json.dumps(reply if reply is not None else {}))
        return copied

    def _take_fault(self, target: str) -> Fault | None:
        queue = self._faults.get(target)
        if not queue:
            return None
        fault = queue[0]
        fault.times -= 1
        if fault.times <= 0:
            queue.pop(0)
        return fault

    async def _sleep(self, seconds: float) -> None:
        if self._clock is not None:
            await self._clock.sleep(seconds)
        else:
            await asyncio.sleep(seconds)
