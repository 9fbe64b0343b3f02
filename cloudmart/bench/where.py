"""Where a run ran: the machine, the versions of the parts, the database's version."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine


def machine() -> dict[str, Any]:
    """Cores, CPU model and Python version of this machine."""
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                "",
            )
    except OSError:
        model = platform.processor()
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version()}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("sqlalchemy", "aio-pika", "redis", "aiomysql", "httpx", "uvicorn"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


async def database_version(engine: AsyncEngine) -> str:
    """The server's version (``SELECT VERSION()``; SQLite's library version on SQLite)."""
    query = "SELECT sqlite_version()" if engine.dialect.name == "sqlite" else "SELECT VERSION()"
    async with engine.connect() as conn:
        value = await conn.scalar(sa.text(query))
    return f"{engine.dialect.name} {value}"
