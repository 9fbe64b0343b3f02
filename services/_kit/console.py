"""What the operator consoles (``GET /ui``) share: templates, static files and the key prompt.

The orchestrator (8005) and, in the choreography, the order service (8001) each serve a console
under :data:`UI_PREFIX`: server-rendered HTML from the templates beside this module, one small
stylesheet and one small script of our own (:data:`STATIC_PREFIX`), nothing from elsewhere.

Access in prod: every console page is behind the API key like the JSON API. A request for a page
without the key is answered ``401`` with :func:`key_page`, a page without data that asks for the
key once; the script keeps it in ``sessionStorage`` and from then on fetches each page, link and
form with ``Authorization: Bearer <key>`` and swaps the document in place. The key is never put
in a page, a URL or a cookie, so it never reaches a log line. Where no key is required (dev,
test) the pages are plain links and forms and work without the script.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from starlette.templating import Jinja2Templates

from activities.errors import InvalidCommand, NotFound

__all__ = [
    "STATIC_PREFIX",
    "UI_PREFIX",
    "duration",
    "error_line",
    "form_fields",
    "key_page",
    "render",
    "static_router",
]

UI_PREFIX = "/ui"
STATIC_PREFIX = "/ui/static/"
MAX_FORM_VALUES = 500

_HERE = Path(__file__).parent
_STATIC_DIR = _HERE / "static"
_STATIC_TYPES = {"console.css": "text/css", "console.js": "text/javascript"}


def duration(start: datetime | None, end: datetime | None) -> str:
    """``start`` to ``end`` for a person: ``850 ms``, ``2.4 s``, ``3 min``; empty if unknown."""
    if start is None or end is None:
        return ""
    seconds = (end - start).total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min"


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def error_line(value: Mapping[str, Any] | None) -> str:
    """A recorded error (``{type, message, ...}``) on one line."""
    if not value:
        return ""
    message = value.get("message") or ""
    return f"{value.get('type', 'error')}: {message}" if message else str(value.get("type"))


_templates = Jinja2Templates(directory=_HERE / "templates")
_templates.env.filters.update(duration=duration, when=_when, error=error_line)
_templates.env.globals.update(ui=UI_PREFIX, static=STATIC_PREFIX)


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """The page ``template`` rendered with ``context`` (HTML-escaped throughout)."""
    response: HTMLResponse = _templates.TemplateResponse(
        request, template, context, status_code=status_code
    )
    # A page of personal data: not kept by the browser or anything between.
    response.headers["Cache-Control"] = "no-store"
    return response


def key_page() -> bytes:
    """The page that asks for the API key: the stylesheet, the script and a form, no data."""
    return _templates.get_template("key.html").render().encode()


async def form_fields(request: Request) -> dict[str, list[str]]:
    """The fields of a submitted ``application/x-www-form-urlencoded`` form, each a list."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip()
    if content_type != "application/x-www-form-urlencoded":
        raise InvalidCommand(
            "a console form is sent as application/x-www-form-urlencoded",
            content_type=content_type,
        )
    try:
        text = (await request.body()).decode()
        return parse_qs(text, max_num_fields=MAX_FORM_VALUES, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidCommand(f"the form cannot be read: {exc}") from exc


static_router = APIRouter(include_in_schema=False)


@static_router.get(STATIC_PREFIX + "{name}")
async def static_file(name: str) -> FileResponse:
    """The console's stylesheet or script (open in prod: they hold no data)."""
    media_type = _STATIC_TYPES.get(name)
    if media_type is None:
        raise NotFound(f"no console file {name!r}", name=name)
    return FileResponse(
        _STATIC_DIR / name, media_type=media_type, headers={"Cache-Control": "max-age=300"}
    )
