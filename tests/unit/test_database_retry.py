"""Database.transaction: a lock conflict is rolled back and run again, up to lock_retries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.db import Database


def _deadlock() -> DBAPIError:
    return DBAPIError("UPDATE inventory ...", {}, Exception(1213, "Deadlock found"))


def _duplicate() -> DBAPIError:
    return DBAPIError("INSERT ...", {}, Exception(1062, "Duplicate entry"))


class _Flaky:
    """A unit of work that raises ``error()`` on its first ``failures`` attempts."""

    def __init__(self, failures: int, error: Callable[[], DBAPIError]) -> None:
        self.failures, self.error, self.attempts = failures, error, 0

    def __call__(self, _conn: AsyncConnection) -> Awaitable[str]:
        self.attempts += 1
        return self._run()

    async def _run(self) -> str:
        if self.attempts <= self.failures:
            raise self.error()
        return "done"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", lock_retries=4)
    yield database
    await database.dispose()


async def test_a_conflict_is_run_again_until_it_succeeds(db: Database) -> None:
    work = _Flaky(2, _deadlock)
    assert await db.transaction(work) == "done"
    assert work.attempts == 3


@pytest.mark.parametrize(
    ("error", "attempts"),
    [(_deadlock, 4), (_duplicate, 1)],
    ids=["lock_retries_counts_the_first_attempt", "other_errors_are_not_retried"],
)
async def test_attempts_stop_at_lock_retries_or_at_once_for_other_errors(
    db: Database, error: Callable[[], DBAPIError], attempts: int
) -> None:
    work = _Flaky(10, error)
    with pytest.raises(DBAPIError):
        await db.transaction(work)
    assert work.attempts == attempts
