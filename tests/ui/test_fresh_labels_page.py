"""Model health page: the fresh-labels section (the active model against judgments it never trained on)."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from annotate.models import Comparison, Judgment, ModelVersion, TrainingRun, utcnow
from tests.factories import make_comparisons
from tests.ui.conftest import open_page


def _seed(app_db, annotator, *, agree: int, n: int, held_out: float = 0.7) -> None:
    """An active version trained before any judgment; ``n`` random-order judgments, ``agree`` of them with it."""
    with app_db.begin() as s:
        run = TrainingRun(status="succeeded", counts={"max_judgment_id": 0})
        s.add(run)
        s.flush()
        version = ModelVersion(artifact_path="/m", encoder_id="enc", is_active=True, training_run_id=run.id,
                               metrics={"accuracy": held_out})
        s.add(version)
        s.flush()
        cids = make_comparisons(s, n + 2)
        s.execute(update(Comparison).where(Comparison.id.in_(cids)).values(
            model_p_a=0.8, priority_model_version_id=version.id))
        for i, cid in enumerate(cids[:n]):
            s.add(Judgment(comparison_id=cid, annotator_id=annotator.id, choice="a" if i < agree else "b",
                           a_on_left=True, time_spent_ms=5_000, created_at=utcnow(), acquisition_strategy="random"))
        for cid in cids[n:]:
            s.add(Judgment(comparison_id=cid, annotator_id=annotator.id, choice="b", a_on_left=True,
                           time_spent_ms=5_000, created_at=utcnow(), acquisition_strategy="bald+diverse"))


@pytest.mark.parametrize("agree, warned", [(28, False), (12, True)])
def test_fresh_labels_are_shown_and_a_drop_is_warned(app_db, people, agree, warned):
    annotator, admin = people
    _seed(app_db, annotator, agree=agree, n=40)
    at = open_page(admin, "model_health.py")
    shown = [m.value for m in at.markdown] + [w.value for w in at.warning]
    [line] = [t for t in shown if t.startswith("Pairs served in random order")]
    assert f"**{agree / 40:.1%}** of 40" in line
    assert ("below its held-out accuracy of 70.0%" in line) == warned
    assert any(t.startswith("Pairs the strategy put first: **0.0%** of 2.") for t in shown)


def test_no_fresh_labels_without_a_model(app_db, people):
    at = open_page(people[1], "model_health.py")
    assert any("nothing to compare with new judgments" in i.value for i in at.info)


def test_the_caption_names_the_first_judgment_counted(app_db, people):
    """The run read up to judgment #5 and fresh labels are those with a greater id: the caption said
    "judgment #5 and later", one judgment too early."""
    annotator, admin = people
    _seed(app_db, annotator, agree=3, n=4)
    with app_db.begin() as s:
        s.execute(update(TrainingRun).values(counts={"max_judgment_id": 5}))
    at = open_page(admin, "model_health.py")
    [caption] = [c.value for c in at.caption if "training run read the labels" in c.value]
    assert "(judgment #6 and later)" in caption, caption
