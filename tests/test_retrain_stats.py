"""The retraining job's statistics: what the promotion gate counts and compares.

Runs use the tiny encoder of ``tests/test_retrain.py``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

from sqlalchemy import select, update

from annotate import retrain
from annotate.models import Judgment, ModelVersion
from tests.test_retrain import (  # noqa: F401 - tiny_encoder and rt_settings are fixtures
    active_id,
    add_pairs,
    held_out,
    rt_settings,
    tiny_encoder,
)


def test_the_gate_counts_held_out_pairs_not_the_votes_on_them(db, rt_settings):
    """Three judgments of one held-out pair are one pair to the minimum of 30, not three."""
    training_side = lambda ph: not held_out(ph)  # noqa: E731
    with db.begin() as s:
        add_pairs(s, 0, 40, judged=True, where=training_side)
        add_pairs(s, 1000, 12, judged=True, votes=3, where=held_out)  # 36 decisive judgments on 12 pairs
    first = retrain.run_once(rt_settings, db=db)
    assert first.status == "succeeded", first.summary()
    with db.begin() as s:
        add_pairs(s, 2000, 10, judged=True, where=training_side)
    second = retrain.run_once(rt_settings, db=db)
    assert second.metrics["new"]["n_decisive"] == 36  # the votes, as rm.evaluate counts them
    assert second.metrics["n_held_out_decisive"] == 12, second.summary()
    assert "only 12 decisive held-out pairs" in second.message, second.summary()
    assert second.promoted  # trained on more labels (50 vs 40)


def _copy_encoder(src, dst):
    """The same weights under another encoder id (a byte of its config differs)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["prefloop_note"] = "a copy"
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_an_active_model_on_another_encoder_is_compared_on_the_same_held_out_pairs(db, rt_settings, tmp_path):
    """After an encoder change the active model is re-scored with its own encoder, not judged by old metrics.

    Its stored accuracy came from the held-out labels of its own run; comparing the new model's accuracy
    on today's held-out labels with it compares two different sets of pairs.
    """
    settings = dataclasses.replace(rt_settings, promote_tolerance=0.2)
    with db.begin() as s:
        add_pairs(s, 0, 150, judged=True)
    first = retrain.run_once(settings, db=db)
    assert first.status == "succeeded" and first.metrics["new"]["n_decisive"] >= retrain.MIN_HELD_OUT_PAIRS
    # Its old held-out labels were easy: say it scored them all right.
    with db.begin() as s:
        version = s.get(ModelVersion, first.model_version_id)
        s.execute(update(ModelVersion).where(ModelVersion.id == version.id)
                  .values(metrics={**version.metrics, "accuracy": 1.0}))
        # Today's held-out labels are harder: half of the new ones say the bad response wins.
        add_pairs(s, 3000, 30, judged=True, where=held_out)
        add_pairs(s, 4000, 30, judged=True, wrong=True, where=held_out)

    other = _copy_encoder(rt_settings.resolved_encoder_path, tmp_path / "other-encoder")
    second = retrain.run_once(dataclasses.replace(settings, encoder_path=str(other)), db=db)
    active = second.metrics["active"]
    assert "note" not in active, active  # re-scored, not the stored figures
    assert active["n_decisive"] == second.metrics["new"]["n_decisive"]
    assert second.promoted, second.summary()  # the same features: the same accuracy on the same pairs
    with db.read() as s:
        assert active_id(s) == second.model_version_id


def test_an_active_model_whose_encoder_is_gone_is_replaced(db, rt_settings, tmp_path):
    """It can score nothing, the queue included: the new model replaces it whatever its stored metrics say."""
    settings = dataclasses.replace(rt_settings, promote_tolerance=0.2)
    old = _copy_encoder(rt_settings.resolved_encoder_path, tmp_path / "old-encoder")
    with db.begin() as s:
        add_pairs(s, 0, 150, judged=True)
        add_pairs(s, 1000, 10, judged=False)
    first = retrain.run_once(dataclasses.replace(settings, encoder_path=str(old)), db=db)
    assert first.status == "succeeded"
    with db.begin() as s:
        version = s.get(ModelVersion, first.model_version_id)
        s.execute(update(ModelVersion).where(ModelVersion.id == version.id)
                  .values(metrics={**version.metrics, "accuracy": 1.0}))
        add_pairs(s, 3000, 30, judged=True, wrong=True, where=held_out)
    shutil.rmtree(old)

    second = retrain.run_once(settings, db=db)
    assert second.status == "succeeded" and second.promoted, second.summary()
    assert "cannot be loaded" in second.message
    with db.read() as s:
        assert active_id(s) == second.model_version_id


def test_an_active_model_whose_encoder_is_gone_is_replaced_without_held_out_pairs(db, rt_settings, tmp_path):
    """With no held-out pairs the gate would keep it for its larger training set; it can score nothing."""
    from annotate.models import JudgmentState

    training_side = lambda ph: not held_out(ph)  # noqa: E731
    old = _copy_encoder(rt_settings.resolved_encoder_path, tmp_path / "old-encoder")
    with db.begin() as s:
        add_pairs(s, 0, 40, judged=True, where=training_side)
        add_pairs(s, 1000, 10, judged=False)
    first = retrain.run_once(dataclasses.replace(rt_settings, encoder_path=str(old)), db=db)
    assert first.status == "succeeded" and first.counts["n_train"] == 40
    with db.begin() as s:  # ten judgments undone: the next model trains on fewer labels
        undone = s.scalars(select(Judgment.id).order_by(Judgment.id).limit(10)).all()
        s.execute(update(Judgment).where(Judgment.id.in_(undone)).values(state=JudgmentState.retracted))
    shutil.rmtree(old)

    second = retrain.run_once(rt_settings, force=True, db=db)
    assert second.status == "succeeded" and second.promoted, second.summary()
    assert second.counts["n_train"] == 30 and "cannot be loaded" in second.message
