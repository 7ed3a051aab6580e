"""The Import page in a real browser, with a file the command line imported already.

Needs Debian's chromium at /usr/bin/chromium and playwright; FAILS (never skips)
when either is missing. Uses the server and helpers of ``test_e2e_browser``.
"""

from __future__ import annotations

import json

import pytest

from annotate import accounts, ingest, migrate
from annotate.db import Database, create_db_engine
from annotate.settings import load_settings
from tests.ui.test_e2e_browser import PASSWORD, TIMEOUT_MS, _settle, logged_in_page, streamlit_server

pytestmark = pytest.mark.browser

ROWS = [{"prompt": f"Question {i}?", "response_a": f" Answer {i}.", "response_b": f" No answer {i}.",
         "winner": "a"} for i in range(3)]


def test_a_file_imported_before_says_so_before_import_is_pressed(tmp_path):
    """`prefloop import` first, then the same file on the Import page: the page showed the known-winner
    note ("annotators will not see those pairs") and nothing said the file was in already; Import then
    added nothing. It names the earlier batch instead."""
    from playwright.sync_api import expect

    upload = tmp_path / "pairs.jsonl"
    upload.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    url = f"sqlite:///{tmp_path / 'import.db'}"
    migrate.upgrade(url)
    database = Database(create_db_engine(url))
    settings = load_settings({"PREFLOOP_DATABASE_URL": url, "PREFLOOP_DATA_DIR": str(tmp_path / "data")})
    with database.begin() as session:
        accounts.create_user(session, "root", PASSWORD, "admin", system=True)
        ingest.import_file(session, settings, upload, system=True)  # as the command line does
    database.dispose()

    expect.set_options(timeout=TIMEOUT_MS)
    with streamlit_server(url, tmp_path) as base, logged_in_page(base, "root") as page:
        page.get_by_role("link", name="Import").click()
        page.locator("input[type=file]").set_input_files(str(upload))
        expect(page.get_by_role("button", name="Import")).to_be_visible()
        _settle(page)
        expect(page.get_by_text("This file was imported before (last as batch 1, pairs.jsonl, at ", exact=False)
               ).to_be_visible()
        expect(page.get_by_text("annotators will not see those pairs", exact=False)).to_have_count(0)
