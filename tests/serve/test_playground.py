"""The playground page in a real headless browser (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import os
import re
import shutil

import pytest

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no chromium at {CHROMIUM}: `make test` installs Debian's chromium when it can")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield browser
        browser.close()


def test_ghost_text_appears_while_typing_and_tab_accepts(browser, server, tmp_path):
    page = browser.new_page()
    page.goto(server.url + "/")
    editor = page.locator("#code")
    editor.click()
    typed = "def add(a, b):\n    return "
    page.keyboard.type(typed, delay=20)
    ghost = page.locator("#ghost")
    ghost.wait_for(state="attached", timeout=15000)
    suggestion = ghost.inner_text()
    assert re.fullmatch(r"[ab]+", suggestion)  # what the served model says
    assert re.search(r"prompt \d+ tokens evaluated \(\d+ cached\)", page.locator("#status").inner_text())
    page.screenshot(path=str(tmp_path / "playground.png"))
    page.keyboard.press("Tab")
    assert editor.input_value() == typed + suggestion
    assert page.locator("#ghost").count() == 0
    page.close()


def test_typing_reuses_the_cache_and_supersedes(browser, server):
    page = browser.new_page()
    page.goto(server.url + "/")
    page.locator("#code").click()
    page.keyboard.type("import os\nimport sys\n\nvalue = ", delay=5)
    page.locator("#ghost").wait_for(state="attached", timeout=15000)
    status = page.locator("#status").inner_text()
    cached = int(re.search(r"\((\d+) cached\)", status).group(1))
    assert cached > 0  # keystrokes share their prefix with the previous request
    page.close()
