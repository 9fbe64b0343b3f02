"""The shipping service: its REST routes (``api.router``) and app factory (``main.build_app``)."""

from __future__ import annotations

from services.shipping.main import build_app

__all__ = ["build_app"]
