"""Adapters for the engine's ports: SQL and in-memory stores, the in-memory transport.

Chosen in one composition root per process; nothing else constructs them.
"""

from __future__ import annotations

from engine.adapters.memory_store import InMemoryHistoryStore
from engine.adapters.memory_transport import InMemoryTransport
from engine.adapters.sql_store import SqlHistoryStore

__all__ = ["InMemoryHistoryStore", "InMemoryTransport", "SqlHistoryStore"]
