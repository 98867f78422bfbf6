"""The browser tier: the playground in headless Chromium.

Debian's ``chromium`` driven by Playwright's Python package through ``executable_path``
(Playwright's own browser downloads are never used). Without /usr/bin/chromium the tests
are skipped with the reason, except in CI (env ``CI`` set), where that is a failure.
Screenshots of the states a person meets go to ``test-artifacts/playground/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "playground"
DESKTOP = {"width": 1280, "height": 900}


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the browser tests must run)")
    pytest.skip(reason)


# Per module, not per session: Playwright's sync API keeps an asyncio loop running in the main
# thread while it is started, and the tests after this tier call asyncio.run().
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright's Python package is missing: pip install 'playwright>=1.40'")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield launched
        launched.close()


class PageProblems:
    """What went wrong inside the page: uncaught errors, and content the CSP blocked."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            self.errors.append(f"CSP: {message.text}")


class Pages:
    """Opens pages, each in a fresh browser context (empty storage); closes them at the end of
    the test and fails it if any page had an uncaught error or a CSP violation."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.opened: list[tuple[Any, PageProblems]] = []

    def open(self, init_script: str | None = None, **context_options: Any) -> Any:
        options = {"viewport": DESKTOP, "accept_downloads": True, **context_options}
        context = self.browser.new_context(**options)
        if init_script:
            context.add_init_script(init_script)
        opened = context.new_page()
        self.opened.append((context, PageProblems(opened)))
        return opened

    def close(self) -> list[str]:
        errors = [error for _, problems in self.opened for error in problems.errors]
        for context, _ in self.opened:
            context.close()
        return errors


@pytest.fixture
def pages(browser: Any) -> Iterator[Pages]:
    opener = Pages(browser)
    yield opener
    assert opener.close() == []


@pytest.fixture
def page(pages: Pages) -> Any:
    return pages.open()


def screenshot(page: Any, name: str, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page, animations="disabled")  # transitions at their end state
    return path
