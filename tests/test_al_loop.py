"""The active-learning loop through the service layer, on SQLite and PostgreSQL.

Annotators judge through ``queue.next_comparison`` and ``judgments.submit``;
the retraining job learns from those judgments and rewrites the priorities
with the configured strategy; the queue then serves in that order, records
the provenance of each pick, and never changes a pair an annotator holds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sqlalchemy import select

from annotate import judgments, queue, retrain
from annotate.campaign import get_options, update_options
from annotate.models import Comparison, ComparisonStatus, Judgment, ModelVersion
from tests.factories import make_user
from tests.test_retrain import GOOD, add_pairs, rt_settings, tiny_encoder  # noqa: F401 (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def loop_settings(rt_settings):
    return dataclasses.replace(rt_settings, gold_rate=0.0, probe_rate=0.0)


def _judge(db, settings, annotator, n: int) -> list[int]:
    """``n`` judgments through the service layer, each saying the careful answer is better."""
    done = []
    for _ in range(n):
        with db.begin() as s:
            options = get_options(s, settings)
            a = queue.next_comparison(s, settings, options, actor=annotator)
            if a is None:
                break
            careful_left = a.left_text.startswith(GOOD[:20])
            judgments.submit(s, settings, actor=annotator, comparison_id=a.comparison_id,
                             shown="left" if careful_left else "right")
            done.append(a.comparison_id)
    return done


def _open_state(session):
    rows = session.execute(
        select(Comparison.id, Comparison.priority, Comparison.priority_score, Comparison.priority_strategy,
               Comparison.priority_model_version_id, Comparison.model_p_a, Comparison.response_a_id,
               Comparison.response_b_id)
        .where(Comparison.status == ComparisonStatus.open).order_by(Comparison.id)).all()
    return {r[0]: r[1:] for r in rows}


def _held_out(session, ids) -> np.ndarray:
    """Whether each comparison's prompt is on the retraining job's held-out side."""
    from annotate.models import Prompt
    from rm.split import held_out_mask

    hashes = dict(session.execute(select(Comparison.id, Prompt.content_hash)
                                  .join(Prompt, Prompt.id == Comparison.prompt_id)
                                  .where(Comparison.id.in_([int(i) for i in ids]))).all())
    return held_out_mask([hashes[int(i)] for i in ids], retrain.TEST_FRACTION)


def _p_careful_wins(state, session) -> np.ndarray:
    """The model's P(careful answer wins) for each open pair (A is careful for even prompts)."""
    from annotate.models import Response

    out = []
    for _, (_, _, _, _, p_a, a_id, _) in state.items():
        a_is_careful = session.get(Response, a_id).text.startswith(GOOD[:20])
        out.append(p_a if a_is_careful else 1 - p_a)
    return np.asarray(out)


def test_judgments_drive_the_next_priorities_and_the_served_order(db, loop_settings):
    settings = loop_settings
    with db.begin() as s:
        ann = make_user(s, "ann")
        other = make_user(s, "bob")
        admin = make_user(s, "root", role="admin")
        add_pairs(s, 0, 160, judged=False)
        update_options(s, settings, actor=admin, strategy="margin", batch_size=8)
        before = _open_state(s)
    assert {v[2] for v in before.values()} <= {None, "random"}  # import order: seeded random

    # Round 1: labels come only from annotators working the queue.
    first = _judge(db, settings, ann, 48)
    assert len(first) == 48
    with db.begin() as s:
        held = queue.next_comparison(s, settings, get_options(s, settings), actor=other)  # bob has a pair on screen
    r1 = retrain.run_once(settings, db=db)
    assert r1.status == "succeeded", r1.summary()
    assert r1.counts["n_train"] + r1.counts["n_test"] == 48

    with db.read() as s:
        v1 = s.scalar(select(ModelVersion.id).where(ModelVersion.is_active))
        after1 = _open_state(s)
        # The model learned what the annotators said: the careful answer wins on pairs nobody judged.
        assert np.mean(_p_careful_wins(after1, s) > 0.5) > 0.9
        ids = np.array(list(after1))
        held_out = _held_out(s, ids)
    assert set(after1) == set(before) - set(first)
    assert 0 < held_out.sum() < len(ids)
    assert all(v[3] == v1 for v in after1.values())
    # Training-side pairs are ordered by the strategy; held-out prompts' pairs, whose labels only
    # measure models, in random order (no score), so held-out accuracy stands for all of them.
    assert [after1[i][2] for i in ids] == [retrain.HELD_OUT_STRATEGY if h else "margin" for h in held_out]
    assert all((after1[i][1] is None) == h for i, h in zip(ids, held_out))
    priority = np.array([after1[i][0] for i in ids])
    # Margin: the training pair whose P(A wins) is closest to 1/2 comes first (one pair per prompt, so no cap).
    train = ids[~held_out]
    closeness = np.array([abs(after1[i][4] - 0.5) for i in train])
    train_priority = np.array([after1[i][0] for i in train])
    assert np.array_equal(train[np.argsort(-train_priority)][:8], train[np.argsort(closeness, kind="stable")][:8])
    assert not np.array_equal(np.argsort(-priority), np.argsort([-before[i][0] for i in ids]))
    # The two sides are interleaved at their share of the pool all along the queue.
    share = held_out.mean()
    served_held = np.cumsum(held_out[np.argsort(-priority)])
    assert np.all(np.abs(served_held - share * np.arange(1, len(ids) + 1)) <= 1)

    # A pair on screen during the retrain stays on screen; the next claim follows the new order.
    with db.begin() as s:
        again = queue.next_comparison(s, settings, get_options(s, settings), actor=other)
        assert again.comparison_id == held.comparison_id
        judgments.submit(s, settings, actor=other, comparison_id=held.comparison_id, shown="tie")
    with db.begin() as s:
        served = queue.next_comparison(s, settings, get_options(s, settings), actor=other)
        state = _open_state(s)
        free = {i: v for i, v in state.items() if i != served.comparison_id}
        assert served.comparison_id == max(state, key=lambda i: (state[i][0], i))
        assert state[served.comparison_id][0] >= max(v[0] for v in free.values())
        queue.release_lease(s, served.comparison_id, other.id)

    # Round 2: more judgments through the service; the next retrain rewrites the order from them.
    second = _judge(db, settings, ann, 16)
    with db.read() as s:
        j = s.scalars(select(Judgment).where(Judgment.comparison_id == second[0])).one()
        # Provenance: the model version, strategy and score that put the pair in front of the annotator.
        assert (j.model_version_id, j.acquisition_strategy) == (v1, after1[second[0]][2])
        if after1[second[0]][1] is None:
            assert j.acquisition_score is None
        else:
            assert j.acquisition_score == pytest.approx(after1[second[0]][1])
    # The first pairs served in round 2 are round 1's top priorities, in order.
    assert second[:4] == [int(i) for i in ids[np.argsort(-priority)] if int(i) != held.comparison_id][:4]
    r2 = retrain.run_once(settings, db=db)
    assert r2.status in ("succeeded", "rejected"), r2.summary()
    assert r2.counts["n_train"] + r2.counts["n_test"] == 48 + 1 + 16
    with db.read() as s:
        after2 = _open_state(s)
        scorer = s.scalar(select(ModelVersion.id).where(ModelVersion.is_active))
    assert set(after2) == set(after1) - set(second) - {held.comparison_id}
    assert all(v[3] == scorer for v in after2.values())
    with db.begin() as s:
        nxt = queue.next_comparison(s, settings, get_options(s, settings), actor=ann)
        assert nxt.comparison_id == max(after2, key=lambda i: (after2[i][0], i))
