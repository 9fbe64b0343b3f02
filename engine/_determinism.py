"""Whether replayed code asks for what history holds (private).

A step's input is recorded with its ``StepScheduled`` together with a digest of its canonical
JSON; on replay the code's input is compared with it, and a position whose recorded command
differs from the one the code asks for is a divergence. These functions say so in the words
the saga is parked with (``NondeterminismError``); the run decides what to do about it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from engine.errors import NondeterminismError
from engine.history import Event
from engine.workflow import StepCall

__all__ = ["canonical_json", "diverged", "input_digest", "input_mismatch"]


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def input_digest(payload: Any) -> str:
    """A step input's digest, recorded with ``StepScheduled`` and compared on replay."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]


def input_mismatch(call: StepCall, scheduled: Event) -> NondeterminismError | None:
    """Whether the code sends other than what history says it sent (histories recorded before
    inputs were kept are not checked)."""
    digest = scheduled.payload.get("digest")
    if digest is None or digest == input_digest(call.payload):
        return None
    differences = _differences(scheduled.payload.get("input"), call.payload)
    return NondeterminismError(
        f"at position {call.position} the workflow asked for step {call.target} with "
        f"another input than history holds: {'; '.join(differences)}"
    )


def diverged(position: int, asked: str, recorded: Event) -> NondeterminismError:
    """The code asked for ``asked`` at ``position`` where history holds another command."""
    what = recorded.type if recorded.step is None else f"{recorded.type} {recorded.step}"
    return NondeterminismError(
        f"at position {position} the workflow asked for {asked} but history holds {what}"
    )


def _differences(recorded: Any, asked: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, as ``field: history X, code Y`` (dotted paths)."""
    if isinstance(recorded, dict) and isinstance(asked, dict):
        found = []
        for key in sorted(recorded.keys() | asked.keys()):
            here = f"{path}.{key}" if path else str(key)
            if key not in asked:
                found.append(f"{here}: history {recorded[key]!r}, code has no such field")
            elif key not in recorded:
                found.append(f"{here}: history has no such field, code {asked[key]!r}")
            else:
                found.extend(_differences(recorded[key], asked[key], here))
        return found
    if isinstance(recorded, list) and isinstance(asked, list) and len(recorded) == len(asked):
        return [
            d
            for i, (r, a) in enumerate(zip(recorded, asked, strict=True))
            for d in _differences(r, a, f"{path}[{i}]")
        ]
    if canonical_json(recorded) == canonical_json(asked):
        return []
    return [f"{path or 'input'}: history {recorded!r}, code {asked!r}"]
