"""What an admin running a campaign met on the console pages (AppTest): the hour chart, the learning
curve's axis, the reward model's counts and the Export page's minimum votes."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from annotate import export
from annotate.export import ExportFilter
from annotate.models import Judgment, ModelVersion, utcnow
from tests.factories import make_comparisons
from tests.ui.conftest import open_page


def _charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def test_the_hour_chart_spans_the_whole_period_not_the_busy_hour(app_db, people):
    """With every judgment in one hour the chart's axis was that hour: one bar filled the chart and the
    axis read "04:00, 04:00, 05:00". The axis is the period, to the end of the current hour."""
    annotator = people[0]
    with app_db.begin() as s:
        for cid in make_comparisons(s, 3):
            s.add(Judgment(comparison_id=cid, annotator_id=annotator.id, choice="a", a_on_left=True,
                           time_spent_ms=900, created_at=utcnow() - timedelta(minutes=2)))
    at = open_page(people[1], "overview.py")
    [chart] = _charts(at)
    # Vega-Lite DateTime objects on the browser's clock (UTC here: AppTest has no browser zone); timestamps
    # in milliseconds drew an empty chart (seen in chromium).
    start, end = (datetime(d["year"], d["month"], d["date"], d["hours"], d["minutes"], tzinfo=timezone.utc)
                  for d in chart["encoding"]["x"]["scale"]["domain"])
    assert end - start == timedelta(hours=25)  # the 24 hours' first hour to the end of the current one
    assert end - timedelta(hours=1) <= utcnow() <= end


def test_the_learning_curve_writes_whole_label_counts(app_db, people):
    """After the first retrain the curve is one point, and its axis wrote the count "1,821.000000"."""
    with app_db.begin() as s:
        s.add(ModelVersion(artifact_path="/m", encoder_id="enc", is_active=True, promoted=True, n_train=1821,
                           n_test=779, metrics={"accuracy": 0.609, "ensemble_prob_std": 0.043}))
    at = open_page(people[1], "model_health.py")
    [curve] = [c for c in _charts(at) if c.get("encoding", {}).get("x", {}).get("title") == "training labels"]
    assert curve["encoding"]["x"]["axis"]["format"] == ",d"


def test_the_reward_model_page_writes_counts_as_the_overview_does(app_db, people):
    """"Trained on 1821 judgments" here, "1,821 labels" on the overview."""
    with app_db.begin() as s:
        s.add(ModelVersion(artifact_path="/m", encoder_id="enc", is_active=True, promoted=True, n_train=1821,
                           n_test=1779, promoted_at=utcnow(), metrics={"accuracy": 0.609}))
    at = open_page(people[1], "models.py")
    captions = [c.value for c in at.caption]
    assert any("Trained on 1,821 judgments, tested on 1,779 held-out ones" in c for c in captions), captions


def test_the_export_page_passes_its_minimum_votes_to_the_export(app_db, people, monkeypatch):
    built = []

    def recording(**filters) -> ExportFilter:
        built.append(ExportFilter(**filters))
        return built[-1]

    monkeypatch.setattr(export, "ExportFilter", recording)
    at = open_page(people[1], "admin_export.py")
    at.number_input(key="export_min_votes").set_value(2).run()
    assert not at.exception, at.exception
    assert built[-1].min_votes == 1  # typed, not applied: the downloads keep the filters they show
    at.number_input(key="export_min_votes").set_value(2)
    at.button(key="export_apply").click().run()  # the form sends its values with the submit
    assert built[-1].min_votes == 2
    assert any("at least 2 votes" in c.value for c in at.caption), [c.value for c in at.caption]
