"""Counting what a pool's MariaDB connections send: the round trips an operation costs."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine


def count_round_trips(engine: AsyncEngine) -> list[str]:
    """Each command the pool's connections send from now on (a query, a ROLLBACK...)."""
    sent: list[str] = []

    @sa.event.listens_for(engine.sync_engine, "checkout")
    def on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        driver = dbapi_connection.driver_connection
        if getattr(driver, "_counted", False):
            return
        execute = driver._execute_command

        async def counted(command: int, sql: Any) -> Any:
            sent.append(sql if isinstance(sql, str) else repr(sql))
            return await execute(command, sql)

        driver._execute_command = counted
        driver._counted = True

    return sent
