"""Headless Chromium for the Airflow UI tests: Debian's /usr/bin/chromium driven by Playwright's Python package.

No browser is ever downloaded: Playwright's driver launches the system binary. Screenshots go to
`var/test-artifacts/ui/` (git-ignored), are kept whatever the outcome, and a failing step adds
one of the page as it was (`capture_on_failure`).

Selectors were read off the rendered pages of Airflow 3.3's React UI (screenshots and page
content), not guessed: form fields by their labels, buttons by their accessible names ("Sign in",
"Trigger Dag", "Trigger"), a DAG's description in the tooltip of its name's link, the trigger form
in the `dialog` role, the mapped task instances of a run in table rows under
`/dags/<dag>/runs/<run>/tasks/<task>/mapped`.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 900}


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright `Browser`), closed with its driver on the way out."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the UI tests need the `playwright` package: install the project's dev extra (make install)", pytrace=False)
    if not CHROMIUM.exists():
        pytest.fail(f"the UI tests need Debian's chromium at {CHROMIUM}: apt-get install -y chromium (.ci/system-deps)",
                    pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class Shots:
    """Numbered screenshots in one folder: `shot(page, "login")` -> 01-login.png."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for old in [*folder.glob("*.png"), *folder.glob("*.html")]:  # a previous session's would pass for this one's
            old.unlink()
        self.count = 0

    def shot(self, page: Any, name: str, *, full_page: bool = False) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path


@contextmanager
def capture_on_failure(shots: Shots, page: Any, name: str) -> Iterator[None]:
    """On an exception, save a screenshot and the page's HTML as `NN-<name>-failure.*`, then re-raise."""
    try:
        yield
    except BaseException:
        try:
            path = shots.shot(page, f"{name}-failure", full_page=True)
            path.with_suffix(".html").write_text(page.content(), encoding="utf-8")
        except Exception:  # noqa: BLE001 - the test's own failure is what matters
            pass
        raise


def log_in(page: Any, url: str, user: str, password: str) -> None:
    """Through the simple auth manager's login page, as a person does; back on the home page after.

    The UI sends a visitor without a token to `/auth/login?next=/`, and back to `next` once signed in.
    """
    page.goto(url + "/")
    page.wait_for_url("**/auth/login**", timeout=60_000)
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(url + "/", timeout=60_000)
    page.get_by_role("button", name="User").wait_for(timeout=60_000)  # the signed-in navigation bar
