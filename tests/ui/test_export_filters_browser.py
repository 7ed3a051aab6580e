"""The Export page's filters in a real browser: a download uses the filters as applied, and says which.

Before the filters were a form, typing a tag and clicking a download button straight away sent both at
once: the rerun the typed tag started replaced the button's deferred file while the click fetched it, so
the browser got the old filters' file or nothing at all (a dogfood run: no download on two clicks in a
row, and an audit entry for a file that never arrived). Needs Debian's chromium and playwright; FAILS
(never skips) when either is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from annotate import campaign, judgments, queue
from annotate.settings import load_settings
from tests.factories import make_comparisons
from tests.ui.test_e2e_browser import TIMEOUT_MS, _launch, _log_in, _settle, require_browser, seeded, server  # noqa: F401

pytestmark = pytest.mark.browser


def _judge_everything(database, url: str, tmp_path: Path) -> None:
    """annie judges every pair (six tagged e2e, two tagged other, the untagged chat pair)."""
    from annotate.accounts import Actor
    from annotate.models import User
    from sqlalchemy import select

    settings = load_settings(environ={}, data_dir=tmp_path / "data", database_url=url, env="test")
    with database.begin() as session:
        make_comparisons(session, 2, tag="other", start=100)
    with database.read() as session:
        user = session.scalar(select(User).where(User.username == "annie"))
        annie = Actor(id=user.id, username=user.username, role=user.role)
    while True:
        with database.begin() as session:
            options = campaign.get_options(session, settings)
            assignment = queue.next_comparison(session, settings, options, actor=annie)
            if assignment is None:
                return
            judgments.submit(session, settings, actor=annie, comparison_id=assignment.comparison_id, shown="left")


def test_a_download_right_after_typing_a_filter_uses_the_applied_filters_and_says_so(server, seeded, tmp_path):
    expect, sync_playwright = require_browser()
    url, database = seeded
    _judge_everything(database, url, tmp_path)
    expect.set_options(timeout=TIMEOUT_MS)

    def download(page) -> list[dict]:
        with page.expect_download() as info:
            page.get_by_role("button", name="Judgments JSONL").click()
        return [json.loads(line) for line in Path(info.value.path()).read_text().splitlines() if line]

    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server)
            _log_in(page, "root")
            page.get_by_role("link", name="Export").click()
            applied = page.get_by_text("Filters applied to the downloads:")
            expect(applied).to_contain_text("none (everything)")
            _settle(page)

            page.get_by_role("textbox", name="Source tags").fill("other")  # typed, not applied
            unfiltered = download(page)  # clicked straight away: a file arrives, for the filters shown
            expect(applied).to_contain_text("none (everything)")

            page.get_by_role("button", name="Apply filters").click()
            expect(applied).to_contain_text("tags other")
            _settle(page)
            filtered = download(page)
        finally:
            browser.close()

    assert len(unfiltered) == 9
    assert len(filtered) == 2
