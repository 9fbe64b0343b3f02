"""``cloudmart dead-letters``: what the dead-letter queues and streams hold, and re-driving it.

::

    cloudmart dead-letters list [--service S] [--pattern P] [--json]
    cloudmart dead-letters redrive [--service S] [--id ID ...] [--pattern P]

Orchestration's dead letters are the commands in RabbitMQ's ``<ns>.<service>.dead`` queues
(:mod:`services._kit.command_server`); the choreography's are the entries of Redis's
``<ns>:events:dead:<group>`` streams (:mod:`choreography_pattern.redis_bus`). Only a message
that cannot succeed is there: a malformed one, or one that failed past its delivery limit with
an error that is neither a business answer nor a database, broker or network fault.

``list`` reads without taking anything: the commands are fetched unacknowledged and go back to
their queue when the channel closes. ``redrive`` puts each chosen dead letter back once — a
command on its service's command queue (its delivery count reset), an event on the event
stream — and removes it from the dead letters; the command is confirmed by the broker before
its dead copy is acknowledged, the event is added and its dead copy deleted in one MULTI/EXEC.
A re-driven message runs once: the operations' inbox and the handlers' processed events still
guard it, so a group that had handled an event re-driven for another skips it.

Without ``--pattern`` both brokers are read; one that does not answer is named on stderr and
skipped (with ``--pattern`` it is an error).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Sequence
from dataclasses import asdict

import typer

from services._kit import roster
from services._kit.dead_letters import (
    BrokerUnreachable,
    DeadLetter,
    Pattern,
    gather_dead_letters,
)
from services._kit.settings import Settings, get_settings

__all__ = ["DeadLetter", "app", "list_dead_letters", "redrive_dead_letters"]

app = typer.Typer(
    help="What the dead-letter queues (RabbitMQ) and streams (Redis) hold; put it back.",
    no_args_is_help=True,
)


def list_dead_letters(
    settings: Settings,
    *,
    patterns: Sequence[Pattern] = tuple(Pattern),
    services: Sequence[str] = roster.DOMAIN_SERVICES,
) -> tuple[list[DeadLetter], list[BrokerUnreachable]]:
    """Every dead letter of ``services``, and the brokers that did not answer."""
    return asyncio.run(gather_dead_letters(settings, patterns, services, None, redrive=False))


def redrive_dead_letters(
    settings: Settings,
    *,
    patterns: Sequence[Pattern] = tuple(Pattern),
    services: Sequence[str] = roster.DOMAIN_SERVICES,
    ids: Collection[str] | None = None,
) -> tuple[list[DeadLetter], list[BrokerUnreachable]]:
    """Put the dead letters of ``services`` (of ``ids`` only, when given) back, once each."""
    return asyncio.run(gather_dead_letters(settings, patterns, services, ids, redrive=True))


def _services(service: str | None) -> tuple[str, ...]:
    if service is None:
        return roster.DOMAIN_SERVICES
    if service not in roster.DOMAIN_SERVICES:
        raise typer.BadParameter(
            f"{service!r} is not one of {', '.join(roster.DOMAIN_SERVICES)}", param_hint="--service"
        )
    return (service,)


def _patterns(pattern: Pattern | None) -> tuple[Pattern, ...]:
    return tuple(Pattern) if pattern is None else (pattern,)


def _report_unreachable(unreachable: list[BrokerUnreachable], pattern: Pattern | None) -> None:
    skipped = " (skipped)" if pattern is None else ""
    for exc in unreachable:
        typer.echo(f"cannot read the {exc.pattern} dead letters: {exc}{skipped}", err=True)
    if unreachable and pattern is not None:
        raise typer.Exit(2)


def render(letters: Sequence[DeadLetter]) -> str:
    """The dead letters as a table for a terminal."""
    if not letters:
        return "no dead letters"
    header = ("ID", "SERVICE", "METHOD/EVENT", "ORDER", "DELIVERIES", "WHEN", "LAST ERROR")
    rows = [
        (
            letter.id,
            letter.service,
            letter.name,
            letter.order_id or "-",
            "-" if letter.deliveries is None else str(letter.deliveries),
            letter.dead_at or "-",
            " ".join(letter.error.split())[:80] or "-",
        )
        for letter in letters
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    lines = []
    for row in (header, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


_SERVICE = typer.Option(None, "--service", help="Only this service's dead letters.")
_PATTERN = typer.Option(
    None, help="Only orchestration (RabbitMQ) or choreography (Redis); default: both."
)


@app.command("list")
def list_command(
    service: str | None = _SERVICE,
    pattern: Pattern | None = _PATTERN,
    as_json: bool = typer.Option(False, "--json", help="Print the dead letters as JSON."),
) -> None:
    """Show what each dead-letter queue (RabbitMQ) or stream (Redis) holds: id, service, method
    or event type, order id, deliveries, last error, when."""
    letters, unreachable = list_dead_letters(
        get_settings(), patterns=_patterns(pattern), services=_services(service)
    )
    _report_unreachable(unreachable, pattern)
    if as_json:
        typer.echo(json.dumps([asdict(letter) for letter in letters], indent=2))
    else:
        typer.echo(render(letters))


@app.command("redrive")
def redrive_command(
    service: str | None = _SERVICE,
    ids: list[str] = typer.Option(
        [], "--id", help="Only this dead letter (repeatable); default: every one."
    ),
    pattern: Pattern | None = _PATTERN,
) -> None:
    """Put dead letters back on their queue or stream, once each, and remove them from the
    dead letters. Exit 1 when an --id was not found."""
    wanted = set(ids) if ids else None
    letters, unreachable = redrive_dead_letters(
        get_settings(), patterns=_patterns(pattern), services=_services(service), ids=wanted
    )
    _report_unreachable(unreachable, pattern)
    for letter in letters:
        typer.echo(f"redriven {letter.id}  {letter.service}  {letter.name}  {letter.order_id}")
    missing = sorted((wanted or set()) - {letter.id for letter in letters})
    if missing:
        typer.echo(f"no such dead letter: {', '.join(missing)}", err=True)
        raise typer.Exit(1)
    if not letters:
        typer.echo("no dead letters")
