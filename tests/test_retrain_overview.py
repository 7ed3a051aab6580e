"""The admin overview's "Next retrain" line against the watcher's rule (``annotate.retrain.check_due``)."""

from __future__ import annotations

import re
from datetime import timedelta

from annotate.models import AppSetting, Judgment, TrainingRun, utcnow
from tests.factories import make_comparisons
from tests.ui.conftest import app_db, open_page, people, ui_template  # noqa: F401 - fixtures

TIMEOUT = 60


def test_overview_next_retrain_after_a_failed_run_is_when_the_watcher_tries_again(app_db, people):  # noqa: F811
    """After a failed run, with enough new judgments, it read "Next retrain: not before 18:23:22 (…next try after
    17:54:42 UTC)": the time trigger's moment, while the watcher retrained at the end of the wait."""
    annotator, admin = people
    with app_db.begin() as s:
        s.add(AppSetting(key="retrain_every_labels", value=5))
        s.add(AppSetting(key="retrain_every_minutes", value=30))
        at = utcnow() - timedelta(minutes=1)
        s.add(TrainingRun(status="succeeded", step="done", started_at=at, finished_at=at,
                          counts={"max_judgment_id": 0}))
        for cid in make_comparisons(s, 6):
            s.add(Judgment(comparison_id=cid, annotator_id=annotator.id, choice="a", a_on_left=True))
        s.add(TrainingRun(status="failed", step="train", error="disk full", started_at=utcnow(),
                          finished_at=utcnow()))
    page = open_page(admin, "overview.py", TIMEOUT)
    [caption] = [c.value for c in page.caption if c.value.startswith("Next retrain")]
    shown = re.fullmatch(r"Next retrain: not before (\S+ \S+) \(UTC\) \(6 new judgments; the last run failed, "
                         r"next try after (\S+ \S+) UTC\), if `prefloop retrain --watch` runs\.", caption)
    assert shown, caption
    assert shown.group(1) == shown.group(2)[:16], caption  # the wait's end, not the time trigger's 29 minutes later
