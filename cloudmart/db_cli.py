"""``cloudmart db``: create the database and every table, fill it, print its schema."""

from __future__ import annotations

import asyncio

import typer

from services._kit.settings import Settings, get_settings

__all__ = ["db_app", "prepare_database"]

db_app = typer.Typer(help="Create and fill the database.", no_args_is_help=True)


@db_app.command("init")
def db_init(
    seed: bool = typer.Option(
        False, "--seed", help="Add the demo catalogue (customers, books, stock)."
    ),
    reset: bool = typer.Option(False, "--reset", help="Drop every table first."),
) -> None:
    """Create the database named in CLOUDMART_DATABASE_URL (or the SQLite file) and its tables."""
    settings = get_settings()
    asyncio.run(prepare_database(settings, seed=seed, reset=reset))
    where = (settings.database_url and _redacted(settings.database_url)) or settings.sqlite_path
    typer.echo(f"database ready: {where}{' (demo catalogue)' if seed else ''}")


async def prepare_database(settings: Settings, *, seed: bool, reset: bool) -> None:
    """The configured database made if missing, with every table (dropped first on
    ``reset``) and, on ``seed``, the demo catalogue."""
    from activities.db import create_engine
    from cloudmart.schema import create_schema, ensure_database, seed_demo

    url = settings.effective_database_url
    await ensure_database(url)
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        await create_schema(engine, reset=reset)
        if seed:
            await seed_demo(engine)
    finally:
        await engine.dispose()


@db_app.command("sql")
def db_sql() -> None:
    """Print the schema as MySQL/MariaDB DDL (the content of init.sql)."""
    from cloudmart.schema import generate_init_sql

    typer.echo(generate_init_sql(), nl=False)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
