"""Database.transaction: a lock conflict is rolled back and run again, up to lock_retries."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.db import Database


class _Deadlock(Exception):
    def __init__(self) -> None:
        super().__init__(1213, "Deadlock found when trying to get lock")


def _deadlock() -> DBAPIError:
    return DBAPIError("UPDATE inventory ...", {}, _Deadlock())


@pytest.fixture
async def db(tmp_path: Path) -> Database:
    database = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", lock_retries=4)
    yield database  # type: ignore[misc]
    await database.dispose()


async def test_a_conflict_is_run_again_until_it_succeeds(db: Database) -> None:
    attempts = 0

    async def work(_conn: AsyncConnection) -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise _deadlock()
        return "done"

    assert await db.transaction(work) == "done"
    assert attempts == 3


async def test_lock_retries_counts_every_attempt_the_first_included(db: Database) -> None:
    attempts = 0

    async def work(_conn: AsyncConnection) -> None:
        nonlocal attempts
        attempts += 1
        raise _deadlock()

    with pytest.raises(DBAPIError):
        await db.transaction(work)
    assert attempts == 4


async def test_other_errors_are_not_retried(db: Database) -> None:
    attempts = 0

    async def work(_conn: AsyncConnection) -> None:
        nonlocal attempts
        attempts += 1
        raise DBAPIError("INSERT ...", {}, Exception(1062, "Duplicate entry"))

    with pytest.raises(DBAPIError):
        await db.transaction(work)
    assert attempts == 1
