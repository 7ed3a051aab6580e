"""Model health's fresh labels: the active model against judgments it never trained on (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import update

from annotate import dashboard
from annotate.models import Comparison, Judgment, JudgmentSource, ModelVersion, TrainingRun, utcnow
from tests.factories import make_comparisons, make_user


def _j(cid, uid, choice, strategy="random", **kw):
    return Judgment(comparison_id=cid, annotator_id=uid, choice=choice, a_on_left=True, time_spent_ms=5_000,
                    created_at=utcnow(), acquisition_strategy=strategy, **kw)


def test_fresh_labels_count_only_what_the_active_model_never_saw(db):
    with db.begin() as s:
        admin, ann, other = make_user(s, "boss", "admin"), make_user(s, "ann"), make_user(s, "ann2")
        c = make_comparisons(s, 12, overlap=3)
        old = _j(c[0], ann.id, "a")
        s.add(old)
        s.flush()
        run = TrainingRun(status="succeeded", counts={"max_judgment_id": old.id})
        s.add(run)
        s.flush()
        earlier = ModelVersion(artifact_path="/v0", encoder_id="enc", training_run_id=run.id)
        active = ModelVersion(artifact_path="/v1", encoder_id="enc", is_active=True, training_run_id=run.id,
                              metrics={"accuracy": 0.9})
        s.add_all([earlier, active])
        s.flush()
        for cid, p, mv in [(c[0], 0.8, active), (c[1], 0.8, active), (c[2], 0.3, active), (c[3], 0.7, active),
                           (c[4], 0.2, active), (c[5], 0.9, earlier), (c[6], 0.9, active), (c[7], 0.5, active),
                           (c[8], 0.9, active), (c[9], 0.9, active), (c[10], 0.9, active), (c[11], 0.9, active)]:
            s.execute(update(Comparison).where(Comparison.id == cid).values(model_p_a=p,
                                                                             priority_model_version_id=mv.id))
        s.add_all([
            _j(c[0], other.id, "b"),  # its pair was trained on (a judgment up to the mark)
            _j(c[1], ann.id, "a", "random (held-out)"),  # random order: agrees
            _j(c[2], ann.id, "a"),  # random order: disagrees
            _j(c[3], ann.id, "b", "bald+diverse"),  # chosen: disagrees
            _j(c[4], ann.id, "b", "bald+diverse"),  # chosen: agrees
            _j(c[5], ann.id, "a"),  # scored by another version
            _j(c[6], ann.id, "tie"),  # not decisive
            _j(c[7], ann.id, "a"),  # the model calls it even
            _j(c[8], ann.id, "b", is_probe=True),
            _j(c[9], ann.id, "b", was_gold=True),
            _j(c[10], ann.id, "b", state="retracted"),
            _j(c[11], ann.id, "b", source=JudgmentSource.imported),
        ])
    with db.read() as s:
        fresh = dashboard.model_health(s, actor=admin).fresh
    assert (fresh.version_id, fresh.after_judgment_id) == (active.id, old.id)
    assert (fresh.random_n, fresh.random_correct, fresh.chosen_n, fresh.chosen_correct) == (2, 1, 2, 1)
    low, high = fresh.random_interval
    assert low < 0.5 < high


def test_no_fresh_labels_without_an_active_model_from_a_run(db):
    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        s.add(ModelVersion(artifact_path="/v", encoder_id="enc", is_active=True))  # e.g. registered by hand
    with db.read() as s:
        assert dashboard.model_health(s, actor=admin).fresh is None
