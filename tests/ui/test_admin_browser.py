"""The admin console in a real browser, for what AppTest cannot see (layout).

Needs Debian's chromium at /usr/bin/chromium and playwright; FAILS (never skips)
when either is missing. Uses the server and helpers of ``test_e2e_browser``.
"""

from __future__ import annotations

import pytest

from annotate import accounts, migrate
from annotate.db import Database, create_db_engine
from annotate.models import ModelVersion
from tests.factories import make_comparisons
from tests.ui.test_e2e_browser import PASSWORD, TIMEOUT_MS, _settle, logged_in_page, streamlit_server

pytestmark = pytest.mark.browser

# Text on the page that shows an ellipsis instead of all of it: metric labels and values, widget and button
# labels (the hidden inputs of date pickers and uploaders overflow too, with no text).
_CUT_TEXT_JS = """() => [...document.querySelectorAll('main *')]
    .filter(e => (getComputedStyle(e).textOverflow === 'ellipsis'
                  || e.closest('[data-testid=stMetricLabel], [data-testid=stMetricValue]'))
                 && e.scrollWidth > e.clientWidth + 1 && e.innerText.trim())
    .map(e => e.innerText)"""


@pytest.fixture
def console(tmp_path):
    url = f"sqlite:///{tmp_path / 'console.db'}"
    migrate.upgrade(url)
    database = Database(create_db_engine(url))
    with database.begin() as session:
        accounts.create_user(session, "root", PASSWORD, "admin", system=True)
        make_comparisons(session, 3, tag="console")
        session.add(ModelVersion(artifact_path="/m", encoder_id="enc", is_active=True, promoted=True, n_train=60,
                                 n_test=40, metrics={"accuracy": 0.7412, "ece": 0.05, "log_loss": 0.61,
                                                     "length_baseline_accuracy": 0.55}))
    database.dispose()
    with streamlit_server(url, tmp_path) as base:
        yield base


def test_console_figures_and_labels_are_never_cut_off_at_1280_or_800_px(console):
    """The metric rows were columns: at 800 px wide the overview showed "10…" for 100,023 prompts
    and at 1280 px "Median time per judgment" lost its end. They wrap onto more lines instead.
    At 800 px the Annotators page cut "Krippendorff's α (ordinal)" to "Krippe…", and the Export page
    its longer checkbox labels and "Judgments Parquet (datasets)"."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    cut: dict[tuple[str, int], list[str]] = {}
    with logged_in_page(console, "root") as page:
        expect(page.get_by_role("heading", name="Campaign overview")).to_be_visible()
        for name, ready in (("Overview", "stMetric"), ("Model health", "stMetric"), ("Reward model", "stMetric"),
                            ("Annotators", "stMetric"), ("Export", "stDownloadButton")):
            page.get_by_role("link", name=name, exact=True).click()
            expect(page.get_by_test_id(ready).first).to_be_visible()
            for width in (1280, 800):
                page.set_viewport_size({"width": width, "height": 1000})
                _settle(page)
                cut[name, width] = page.evaluate(_CUT_TEXT_JS)
                assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth"), (name, width)
            page.set_viewport_size({"width": 1280, "height": 1000})
    assert {key: texts for key, texts in cut.items() if texts} == {}
