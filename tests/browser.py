"""A real browser for the consoles' tests: Debian's Chromium (``/usr/bin/chromium``, installed
by ``scripts/ensure-browser.sh``) driven by Playwright, and what every page visited is checked
for (:func:`accessible`). Everything is used from the keyboard (:func:`press`, :func:`type_into`);
every wait is Playwright's own, with a deadline."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Locator, Page, async_playwright, expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
WAIT_MS = 30_000


def require_chromium() -> None:
    """Fail the test (before it deploys anything) when Debian's Chromium is not installed."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/ensure-browser.sh installs it")


@asynccontextmanager
async def browser_page(base_url: str) -> AsyncIterator[Page]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(
                base_url=base_url, viewport={"width": 1280, "height": 900}
            )
            context.set_default_timeout(WAIT_MS)
            yield await context.new_page()
        finally:
            await browser.close()


async def press(page: Page, target: Locator, key: str = "Enter") -> None:
    """Use ``target`` from the keyboard: focus it, then press ``key``."""
    await target.focus()
    await page.keyboard.press(key)


async def type_into(page: Page, field: Locator, text: str) -> None:
    await field.focus()
    await page.keyboard.type(text)


_AUDIT = """() => {
  const named = (el) => (el.textContent || "").trim() || el.getAttribute("aria-label") ||
    (el.labels && el.labels.length && el.labels[0].textContent.trim());
  const problems = [];
  document.querySelectorAll("button, input[type=submit], input[type=button]").forEach((b) => {
    if (!named(b) && !b.value) problems.push("unnamed button: " + b.outerHTML);
  });
  document.querySelectorAll("input:not([type=hidden]), select, textarea").forEach((f) => {
    if (!(f.labels && f.labels.length) && !f.getAttribute("aria-label"))
      problems.push("unlabelled field: " + f.outerHTML);
  });
  const mouse = "[onclick], [onmousedown], [onmouseup], [onmouseover], [ondblclick]";
  document.querySelectorAll(mouse).forEach((el) => problems.push("mouse handler: " + el.tagName));
  document.querySelectorAll("a:not([href]), [role=button]:not(button), a[href^='javascript:']")
    .forEach((el) => problems.push("action that is not a button or link: " + el.outerHTML));
  return problems;
}"""


async def accessible(page: Page) -> None:
    """The page has a title and its landmarks, and every action and field has a name."""
    assert (await page.title()).strip()
    for role in ("banner", "navigation", "main"):
        await expect(page.get_by_role(role).first).to_be_visible()
    problems: list[str] = await page.evaluate(_AUDIT)
    assert problems == []
