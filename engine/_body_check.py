"""What a workflow body may not call, read from its source (private): the clock, randomness,
``uuid4``, ``asyncio.sleep``, I/O — each found with its line and what to call instead.
``@workflow`` refuses the first (:func:`check_body`); ``cloudmart replay --lint`` lists them
all (:func:`nondeterministic_calls`, which :mod:`engine.workflow` exports). The cheap half of a
sandbox: what it cannot see, replay catches.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

from engine.errors import WorkflowDefinitionError

__all__ = ["NondeterministicCall", "check_body", "nondeterministic_calls"]

# Calls a workflow body must not make, by dotted name (``module.*``: anything of the module),
# and what to use instead.
_NOW, _UUID, _SLEEP, _IO = "ctx.now()", "ctx.uuid()", "ctx.sleep()", "a step (ctx.step)"
_FORBIDDEN: dict[str, str] = {
    **dict.fromkeys(
        [
            "time.time",
            "time.time_ns",
            "time.monotonic",
            "time.perf_counter",
            "datetime.now",
            "datetime.utcnow",
            "datetime.today",
            "date.today",
        ],
        _NOW,
    ),
    **dict.fromkeys(["random.*", "secrets.*", "uuid.uuid1", "uuid.uuid4", "uuid4", "uuid1"], _UUID),
    **dict.fromkeys(["asyncio.sleep", "time.sleep"], _SLEEP),
    **dict.fromkeys(
        [
            "open",
            "os.urandom",
            "socket.*",
            "httpx.*",
            "requests.*",
            "aiohttp.*",
            "urllib.*",
            "subprocess.*",
        ],
        _IO,
    ),
}


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _forbidden(name: str) -> str | None:
    parts = name.split(".")
    for start in range(len(parts)):  # datetime.datetime.now matches datetime.now
        tail = ".".join(parts[start:])
        if tail in _FORBIDDEN:
            return _FORBIDDEN[tail]
        if start < len(parts) - 1 and f"{parts[start]}.*" in _FORBIDDEN:
            return _FORBIDDEN[f"{parts[start]}.*"]
    return None


@dataclasses.dataclass(frozen=True)
class NondeterministicCall:
    """A call replay cannot repeat, found in a function's source: ``function`` calls
    ``call()`` at ``filename:line``; ``use`` is what to call instead."""

    function: str
    call: str
    filename: str
    line: int
    use: str


def nondeterministic_calls(func: Callable[..., Any]) -> list[NondeterministicCall]:
    """Every call in ``func``'s source (nested functions included) that a workflow must not
    make, in source order; none when there is no source to read (built at run time)."""
    try:
        source = textwrap.dedent(inspect.getsource(func))
        filename = inspect.getsourcefile(func) or "<workflow>"
    except (OSError, TypeError):  # no source to read: replay still checks
        return []
    first = func.__code__.co_firstlineno
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        use = None if name is None else _forbidden(name)
        if name is not None and use is not None:
            line = first + node.lineno - 1
            found.append(NondeterministicCall(func.__qualname__, name, filename, line, use))
    return sorted(found, key=lambda call: call.line)


def check_body(func: Callable[..., Any]) -> None:
    """Refuse a workflow body that calls what replay cannot repeat, naming the first (see
    :func:`engine.workflow.workflow`)."""
    found = nondeterministic_calls(func)
    if found:
        first = found[0]
        raise WorkflowDefinitionError(
            f"workflow {first.function} calls {first.call}() at {first.filename}:"
            f"{first.line}; a workflow must be deterministic: use {first.use}"
        )
