"""The saga orchestrator's HTTP service (port 8005)."""

from __future__ import annotations

from services.orchestrator.main import build_app

__all__ = ["build_app"]
