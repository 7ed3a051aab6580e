"""The admin console in a real browser: an admin logs in on a seeded database and
every console page renders without an error; a screenshot of each is written to
``bench/screenshots/admin_<page>.png`` for reviewers.

Needs Debian's chromium at /usr/bin/chromium and playwright; FAILS (never
skips) when either is missing. Server start and login follow
``tests/ui/test_e2e_browser.py``.
"""

from __future__ import annotations

import random
import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from annotate import accounts, migrate
from annotate.db import Database, create_db_engine
from annotate.models import AppSetting, Comparison, ComparisonStatus, Judgment, ModelVersion, TrainingRun, utcnow
from tests.factories import make_comparisons
from tests.ui.test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, _settle, require_browser, streamlit_server

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "admin-shots-1"
TIMEOUT_MS = 60_000
BEHAVIOUR = {"alice": "good", "bob": "good", "carol": "good", "dave": "left", "erin": "random"}


def _seed(session) -> int:
    """Five annotators (three careful, one left-clicker, one random and fast) on 60 pairs, three model
    versions, a scored open pool. Returns a comparison id worth reviewing."""
    rng = random.Random(5)
    people = {name: accounts.create_user(session, name, PASSWORD, "annotator", system=True) for name in BEHAVIOUR}
    admin = accounts.create_user(session, "root", PASSWORD, "admin", system=True)
    cids = make_comparisons(session, 60, overlap=3)
    open_ids = make_comparisons(session, 40, start=500)
    now = utcnow()
    truth = {cid: rng.choice("ab") for cid in cids}
    for i, cid in enumerate(cids):
        judges = rng.sample(list(BEHAVIOUR), 3)
        for name in judges:
            a_left = rng.random() < 0.5
            kind = BEHAVIOUR[name]
            if kind == "good":
                choice, ms = (truth[cid] if rng.random() < 0.85 else rng.choice(["a", "b", "tie"])), rng.randint(
                    20_000, 60_000)
            elif kind == "left":
                choice, ms = ("a" if a_left else "b"), rng.randint(1_000, 3_000)
            else:
                choice, ms = rng.choice(["a", "b", "tie", "both_bad"]), rng.randint(500, 1_500)
            session.add(Judgment(comparison_id=cid, annotator_id=people[name].id, choice=choice, a_on_left=a_left,
                                 time_spent_ms=ms, created_at=now - timedelta(minutes=rng.randint(1, 60 * 30)),
                                 rationale="B answers the question; A rambles." if i == 0 else None))
        session.execute(update(Comparison).where(Comparison.id == cid).values(
            judgment_count=3, status=ComparisonStatus.complete,
            model_p_a=min(0.99, max(0.01, (0.8 if truth[cid] == "a" else 0.2) + rng.uniform(-0.25, 0.25)))))
    for cid in open_ids:
        session.execute(update(Comparison).where(Comparison.id == cid).values(
            model_p_a=rng.uniform(0.05, 0.95), priority_score=rng.betavariate(2, 5)))
    for k, (n_train, acc, spread) in enumerate([(40, 0.58, 0.12), (100, 0.66, 0.09), (180, 0.71, 0.07)]):
        run = TrainingRun(status="succeeded", started_at=now - timedelta(hours=3 - k),
                          finished_at=now - timedelta(hours=3 - k, minutes=-2), counts={"max_judgment_id": 0})
        session.add(run)
        session.flush()
        bins = [{"lower": b / 10, "upper": (b + 1) / 10, "predicted": b / 10 + 0.05,
                 "observed": min(1.0, max(0.0, b / 10 + 0.05 + rng.uniform(-0.08, 0.08))), "count": 20}
                for b in range(10)]
        session.add(ModelVersion(artifact_path=f"/models/v{k}", encoder_id="all-MiniLM-L6-v2",
                                 is_active=k == 2, promoted=True, n_train=n_train, n_test=n_train // 5,
                                 training_run_id=run.id,
                                 metrics={"accuracy": acc, "log_loss": 0.62, "ece": 0.04,
                                          "length_baseline_accuracy": 0.55, "reward_length_spearman": 0.21,
                                          "ensemble_prob_std": spread, "calibration": bins}))
    session.add(AppSetting(key="target_judgments", value=400))
    accounts.audit(session, accounts.Actor(admin.id, admin.username, admin.role), "import",
                   filename="pairs.jsonl", added=100)
    return cids[0]


@pytest.fixture
def seeded(tmp_path):
    url = f"sqlite:///{tmp_path / 'admin.db'}"
    migrate.upgrade(url)
    database = Database(create_db_engine(url))
    with database.begin() as session:
        review_id = _seed(session)
    yield url, review_id
    database.dispose()


@pytest.fixture
def server(seeded, tmp_path):
    with streamlit_server(seeded[0], tmp_path) as base:
        yield base


def _shot(page, name: str, ready) -> Path:
    from playwright.sync_api import expect

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    expect(ready.first).to_be_visible()
    _settle(page)
    # Altair charts draw into canvases/SVG after the run ends: give them a moment.
    page.wait_for_timeout(800)
    assert page.get_by_test_id("stException").count() == 0, f"{name}: the page raised"
    path = SCREENSHOTS / f"admin_{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_admin_console_pages_render_and_are_captured(server, seeded):
    expect, sync_playwright = require_browser()
    _, review_id = seeded
    expect.set_options(timeout=TIMEOUT_MS)
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            # A half-hour zone: the pages show times on this browser's clock (st.context.timezone).
            page = browser.new_context(viewport={"width": 1500, "height": 1100},
                                       timezone_id="Asia/Kolkata").new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(server)
            page.get_by_role("textbox", name="Username").fill("root")
            page.get_by_role("textbox", name="Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_role("link", name="Overview")).to_be_visible()

            page.get_by_role("link", name="Overview").click()
            expect(page.get_by_text("Judgments per hour")).to_be_visible()
            expect(page.get_by_test_id("stMetric").filter(has_text="Comparisons")).to_contain_text("100")
            # Chromium names the zone by its older alias.
            expect(page.get_by_text(re.compile(r"^As of \S+ \S+ \(Asia/(Kolkata|Calcutta)\) \(figures"))).to_be_visible()
            written.append(_shot(page, "overview", page.get_by_text("Reward model", exact=True)))

            page.get_by_role("link", name="Annotators").click()
            expect(page.get_by_text("Pairwise Cohen's κ")).to_be_visible()
            expect(page.get_by_text("dave", exact=False).first).to_be_visible()
            written.append(_shot(page, "annotators", page.get_by_text("How flags are decided")))

            page.get_by_role("link", name="Model health").click()
            expect(page.get_by_text("Learning curve")).to_be_visible()
            written.append(_shot(page, "model_health", page.get_by_text("Recent training runs")))

            page.get_by_role("link", name="Review").click()
            box = page.get_by_role("spinbutton", name="Comparison id")
            box.fill(str(review_id))
            box.press("Enter")
            expect(page.get_by_text("B answers the question; A rambles.").first).to_be_visible()
            written.append(_shot(page, "review", page.get_by_role("button", name="Mark as gold")))

            page.get_by_role("link", name="Settings").click()
            written.append(_shot(page, "settings", page.get_by_role("button", name="Save settings")))

            page.get_by_role("link", name="Audit log").click()
            expect(page.get_by_text("Events shown")).to_be_visible()
            written.append(_shot(page, "audit", page.get_by_text("Events shown")))
        finally:
            browser.close()
    for path in written:
        assert path.exists() and path.stat().st_size > 10_000, path
