"""Options more than one ``cloudmart`` command takes."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Pattern"]


class Pattern(StrEnum):
    """The saga style of a deployment."""

    orchestration = "orchestration"
    choreography = "choreography"
