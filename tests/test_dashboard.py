"""Admin console services on a small seeded database (SQLite and PostgreSQL)."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select, text, update

from annotate import campaign, dashboard, quality
from annotate.errors import NotFound, PermissionDenied, PrefloopError
from annotate.models import (
    AuditEvent,
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentSource,
    Lease,
    ModelVersion,
    Response,
    TrainingRun,
    User,
    utcnow,
)
from tests.factories import make_comparisons, make_user


def _j(cid, uid, choice, when, *, ms=10_000, a_on_left=True, probe=False, gold=False, state="active",
       rationale=None):
    return Judgment(comparison_id=cid, annotator_id=uid, choice=choice, a_on_left=a_on_left, time_spent_ms=ms,
                    is_probe=probe, was_gold=gold, state=state, created_at=when, rationale=rationale)


@pytest.fixture
def seeded(db):
    """3 annotators, 6 comparisons (1 gold), 9 live judgments, one retracted, one probe."""
    now = utcnow().replace(minute=30, second=0, microsecond=0)
    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        ann = [make_user(s, f"ann{i}") for i in range(3)]
        cids = make_comparisons(s, 5, overlap=2)
        (gold,) = make_comparisons(s, 1, gold=True, start=50)
        t1, t2 = now - timedelta(hours=2), now - timedelta(minutes=5)
        rows = [
            _j(cids[0], ann[0].id, "a", t1, ms=4_000), _j(cids[0], ann[1].id, "a", t1, ms=6_000),
            _j(cids[1], ann[0].id, "b", t1, ms=8_000), _j(cids[1], ann[1].id, "a", t1, ms=10_000,
                                                          rationale="A answers the question"),
            _j(cids[2], ann[0].id, "tie", t2, ms=12_000), _j(cids[2], ann[2].id, "tie", t2, ms=14_000),
            _j(cids[3], ann[2].id, "both_bad", t2, ms=16_000),
            _j(gold, ann[0].id, "a", t2, ms=18_000, gold=True),
            _j(gold, ann[1].id, "b", t2, ms=20_000, gold=True),
            _j(cids[4], ann[1].id, "a", t2, state="retracted"),
            _j(cids[0], ann[0].id, "b", t2, probe=True, ms=2_000),
        ]
        s.add_all(rows)
        s.execute(update(Comparison).where(Comparison.id.in_(cids[:3])).values(
            judgment_count=2, status=ComparisonStatus.complete))
        s.execute(update(Comparison).where(Comparison.id == cids[3]).values(judgment_count=1))
        s.add(Lease(comparison_id=cids[4], annotator_id=ann[2].id, expires_at=now + timedelta(minutes=10)))
        campaign.update_options(s, campaign.defaults(_settings(db)), actor=admin, target_judgments=16)
    return {"admin": admin, "ann": ann, "cids": cids, "gold": gold, "now": now}


def _settings(db):
    from annotate.settings import load_settings

    return load_settings(environ={}, database_url=str(db.engine.url.render_as_string(hide_password=False)))


def test_overview_counts(db, settings, seeded):
    now = seeded["now"]
    with db.begin() as s:
        # three more annotators who judged nothing: only the one holding a live lease is active
        live, expired, skipped = (make_user(s, name) for name in ("leasing", "expired", "skipper"))
        s.add_all([Lease(comparison_id=seeded["cids"][3], annotator_id=live.id, expires_at=now + timedelta(minutes=5)),
                   Lease(comparison_id=seeded["cids"][3], annotator_id=expired.id,
                         expires_at=now - timedelta(minutes=1)),
                   Lease(comparison_id=seeded["cids"][3], annotator_id=skipped.id,
                         expires_at=now + timedelta(minutes=5), skipped=True)])
    with db.read() as s:
        ov = dashboard.overview(s, settings, actor=seeded["admin"], now=now, period=timedelta(hours=24))
    assert (ov.prompts, ov.comparisons, ov.gold) == (6, 6, 1)
    assert (ov.open, ov.complete, ov.retired) == (3, 3, 0)  # cids 3, 4 and gold are open
    assert ov.queue_depth == 2
    assert ov.judgments == 10  # 9 + probe; the retracted one is not live
    assert ov.counted_judgments == 9
    # ann0, ann1 and ann2 judged 5 min ago (ann2 also holds a lease), "leasing" only holds a live lease: 4
    # active; an expired or skipped lease does not count
    assert ov.active_annotators == 4
    assert ov.target_judgments == 16 and ov.progress == pytest.approx(9 / 16)
    assert sum(n for _, n in ov.per_hour) == ov.judgments_in_period == 10
    assert len(ov.per_hour) == 2 and ov.per_hour[0][1] == 4 and ov.per_hour[1][1] == 6
    # live judgments' times: 2,4,6,8,10,12,14,16,18,20 (s), the probe's (2 s) left out as on the Annotators
    # page -> median 12 s
    assert ov.median_time_ms == pytest.approx(12_000)
    assert ov.active_model is None and ov.last_run is None and ov.next_retrain_at is None


def test_active_annotators_now_leaves_out_deactivated_accounts(db, settings, seeded):
    """A deactivated account that judged minutes ago, or still has a live lease row, is not at work now. Its
    lease row is written back after the deactivation here, as one left by an older prefloop would be."""
    now = seeded["now"]
    with db.begin() as s:
        (cid,) = make_comparisons(s, 1, start=70)
        leasing = make_user(s, "leasing")
        s.add(Lease(comparison_id=cid, annotator_id=leasing.id, expires_at=now + timedelta(minutes=5)))
    with db.read() as s:
        assert dashboard.overview(s, settings, actor=seeded["admin"], now=now).active_annotators == 4
    with db.begin() as s:
        from annotate.accounts import set_active

        set_active(s, "ann2", False, actor=seeded["admin"])  # judged 5 min ago and held a lease
        s.execute(update(User).where(User.username == "leasing").values(active=False))
    with db.read() as s:
        assert dashboard.overview(s, settings, actor=seeded["admin"], now=now).active_annotators == 2


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "America/St_Johns"])
def test_overview_hours_are_utc_hours_whatever_the_server_time_zone(db, settings, seeded, zone):
    # A PostgreSQL server installed in India (or Newfoundland) has a half-hour TimeZone by default:
    # hour buckets must still start on UTC hours, as the page says.
    now = seeded["now"]
    with db.read() as s:
        if s.bind.dialect.name == "postgresql":
            s.execute(text(f"SET LOCAL TIME ZONE '{zone}'"))
        ov = dashboard.overview(s, settings, actor=seeded["admin"], now=now, period=timedelta(hours=24))
    hour = now.replace(minute=0)
    assert ov.per_hour == [(hour - timedelta(hours=2), 4), (hour, 6)]
    assert all(h.utcoffset() == timedelta(0) for h, _ in ov.per_hour)


def test_overview_pace_leaves_out_imported_judgments(db, settings, seeded):
    # An import stamps its judgments with the import time: 500 of them in one hour are not
    # annotators' pace (they stay in the live total).
    now = seeded["now"]
    with db.begin() as s:
        s.execute(insert(Judgment), [{"comparison_id": seeded["cids"][3], "annotator_id": None,
                                      "source": JudgmentSource.imported, "choice": "a", "flags": [],
                                      "created_at": now - timedelta(minutes=1)}] * 500)
    with db.read() as s:
        ov = dashboard.overview(s, settings, actor=seeded["admin"], now=now, period=timedelta(hours=24))
    assert ov.judgments == 510 and ov.counted_judgments == 9
    assert ov.judgments_in_period == 10
    assert [n for _, n in ov.per_hour] == [4, 6]


def test_overview_active_model_and_next_retrain(db, settings, seeded):
    now = seeded["now"]
    with db.begin() as s:
        # the last finished run saw every judgment up to the two-hours-ago ones
        seen = s.scalar(select(func.max(Judgment.id)).where(Judgment.created_at < now - timedelta(hours=1)))
        run = TrainingRun(status="succeeded", started_at=now - timedelta(hours=1),
                          finished_at=now - timedelta(minutes=50), counts={"max_judgment_id": seen})
        s.add(run)
        s.flush()
        s.add(ModelVersion(artifact_path="/x", encoder_id="enc", is_active=True, promoted=True, n_train=40,
                           metrics={"accuracy": 0.71, "ece": "NaN"}, training_run_id=run.id))
    with db.read() as s:
        ov = dashboard.overview(s, settings, actor=seeded["admin"], now=now)
        options = campaign.get_options(s, settings)
    assert ov.active_model["accuracy"] == pytest.approx(0.71) and ov.active_model["ece"] is None
    assert ov.last_run["status"] == "succeeded"
    # the 5-minutes-ago non-probe judgments still standing (the retracted one is no label)
    assert ov.labels_since_last_run == 5
    assert ov.labels_until_retrain == max(0, options.retrain_every_labels - 5)
    assert ov.next_retrain_at == now - timedelta(minutes=50) + timedelta(minutes=options.retrain_every_minutes)


def test_overview_next_retrain_shows_the_wait_after_failed_runs(db, settings, seeded):
    """The next-retrain figure follows the watcher's rule: not 'due' while it waits after failures."""
    from annotate import retrain

    now = seeded["now"]
    with db.begin() as s:
        seen = s.scalar(select(func.max(Judgment.id)).where(Judgment.created_at < now - timedelta(hours=1)))
        s.add(TrainingRun(status="succeeded", started_at=now - timedelta(hours=1),
                          finished_at=now - timedelta(minutes=50), counts={"max_judgment_id": seen}))
        campaign.update_options(s, settings, actor=seeded["admin"], retrain_every_labels=5)
    with db.read() as s:
        ov = dashboard.overview(s, settings, actor=seeded["admin"], now=now)
        options = campaign.get_options(s, settings)
    assert ov.retrain_due and "5 new judgments" in ov.retrain_reason  # 5 >= 5
    assert ov.next_retrain_at == now - timedelta(minutes=50) + timedelta(minutes=options.retrain_every_minutes)

    # Two runs in a row failed since, the latest a minute ago: the watcher waits 2 minutes after it.
    with db.begin() as s:
        for ago in (3, 1):
            s.add(TrainingRun(status="failed", step="train", error="disk full",
                              started_at=now - timedelta(minutes=ago + 1), finished_at=now - timedelta(minutes=ago)))
    with db.read() as s:
        ov = dashboard.overview(s, settings, actor=seeded["admin"], now=now)
        watcher = retrain.check_due(s, settings, since=now, now=now)
        later = dashboard.overview(s, settings, actor=seeded["admin"], now=now + timedelta(minutes=1, seconds=5))
    assert ov.next_retrain_at == now + timedelta(minutes=1)
    assert not ov.retrain_due and "the last 2 runs failed" in ov.retrain_reason
    # (ov passes the watcher's own verdict through: this line documents that, the two above test it)
    assert (ov.retrain_due, ov.retrain_reason, ov.next_retrain_at) == (watcher.due, watcher.reason, watcher.next_at)
    assert later.retrain_due and later.retrain_reason == "5 new judgments"


def test_annotator_table_figures(db, seeded):
    with db.read() as s:
        report = dashboard.annotator_table(s, actor=seeded["admin"])
    by = {a.username: a for a in report.annotators}
    a0, a1, a2 = by["ann0"], by["ann1"], by["ann2"]
    assert (a0.n, a1.n, a2.n) == (4, 3, 2)
    assert (a0.n_gold, a0.n_gold_correct, a1.n_gold, a1.n_gold_correct) == (1, 1, 1, 0)
    assert (a0.n_probes, a0.n_flips) == (1, 1)  # original a, probe b
    assert (a2.n_ties, a2.n_both_bad) == (1, 1)
    # all a_on_left=True: a counts as left, b as right
    assert (a0.n_left, a0.n_decisive) == (2, 3)
    # longer response is B in the factories: a0 chose b once among 3 decisive
    assert (a0.n_longer, a0.n_length_decisive) == (1, 3)
    # leave-one-out majority: a0 on c0 (other: a) agrees, c1 (other: a) disagrees, c2 (other: tie) agrees,
    # gold (other: b) disagrees
    assert (a0.n_majority, a0.n_majority_agree) == (4, 2)
    # kappa ann0 vs ann1 on c0, c1, gold: (a,a) (b,a) (a,b) -> po 1/3, pe = (2/3*2/3 + 1/3*1/3) = 5/9
    pk = {(x, y): (k, n) for x, y, k, n in report.pair_kappas}
    k, n = pk[("ann0", "ann1")]
    assert n == 3 and k == pytest.approx((1 / 3 - 5 / 9) / (1 - 5 / 9))
    # α over the units with two live votes: c0 (a,a), c1 (b,a), c2 (tie,tie), gold (a,b); n_a 4, n_tie 2, n_b 2 of 8.
    # Nominal: 4 disagreeing ordered pairs of 8, expected 2(4·2 + 4·2 + 2·2)/(8·7) = 5/7: α = 1 - (1/2)/(5/7) = 0.3.
    # Ordinal (a < tie < b): δ(a,tie) = (6-3)² = 9, δ(tie,b) = (4-2)² = 4, δ(a,b) = (8-3)² = 25;
    # α = 1 - 7·(4·25) / (2·(8·9 + 4·4 + 8·25)) = 1 - 700/576 = -31/144.
    assert report.alpha_nominal == pytest.approx(0.3)
    assert report.alpha_ordinal == pytest.approx(-31 / 144)
    # the period filter: only the last hour keeps the 5-minutes-ago judgments
    with db.read() as s:
        recent = dashboard.annotator_table(s, actor=seeded["admin"], since=seeded["now"] - timedelta(hours=1))
    assert {a.username: a.n for a in recent.annotators} == {"ann0": 2, "ann1": 1, "ann2": 2}


def test_model_health(db, seeded):
    cids = seeded["cids"]
    with db.begin() as s:
        # c0's B is made 200 characters long: its length gap differs from the other pairs' (all equal)
        b0 = s.scalar(select(Comparison.response_b_id).where(Comparison.id == cids[0]))
        s.execute(update(Response).where(Response.id == b0).values(text="x" * 200, n_chars=200))
        for status, ago in (("failed", 30), ("succeeded", 10)):
            s.add(TrainingRun(status=status, started_at=seeded["now"] - timedelta(minutes=ago + 5),
                              finished_at=seeded["now"] - timedelta(minutes=ago)))
        for i, (n_train, acc) in enumerate([(20, 0.6), (40, 0.7)]):
            s.add(ModelVersion(artifact_path=f"/m{i}", encoder_id="enc", is_active=i == 1, n_train=n_train,
                               metrics={"accuracy": acc, "calibration": [
                                   {"lower": 0.0, "upper": 0.5, "predicted": 0.3, "observed": 0.35, "count": 7},
                                   {"lower": 0.5, "upper": 1.0, "predicted": None, "observed": None, "count": 0}]}))
        # c1: humans split 1-1 -> no majority; c0: humans say a (2-0), model confidently says b -> disagreement
        s.execute(update(Comparison).where(Comparison.id == cids[0]).values(model_p_a=0.1))
        s.execute(update(Comparison).where(Comparison.id == cids[1]).values(model_p_a=0.95))
        s.execute(update(Comparison).where(Comparison.id == cids[3]).values(model_p_a=0.55, priority_score=2.0))
        s.execute(update(Comparison).where(Comparison.id == cids[4]).values(model_p_a=1.0, priority_score=4.0))
    with db.read() as s:
        mh = dashboard.model_health(s, actor=seeded["admin"], bins=4)
    assert [v["n_train"] for v in mh.versions] == [20, 40]
    assert mh.learning_curve == [(20, 0.6, mh.versions[0]["id"]), (40, 0.7, mh.versions[1]["id"])]
    assert mh.active["n_train"] == 40 and mh.held_out_calibration[0]["count"] == 7
    assert [d["comparison_id"] for d in mh.disagreements] == [cids[0]]
    assert mh.disagreements[0]["human_a"] == 2
    # live calibration: c0 (p .1, humans 1.0 A) in bin 1; c1 (p .95, 0.5) in bin 9; c4 (p 1.0) has no decisive votes
    live = {b.lower: b for b in mh.live_calibration if b.count}
    assert set(live) == {0.1, 0.9}
    assert live[0.1].observed == 1.0 and live[0.9].observed == 0.5
    assert mh.open_scored == 2
    assert sum(n for _, _, n in mh.score_histogram) == 2
    assert mh.score_histogram[0][2] == 1 and mh.score_histogram[-1][2] == 1
    # newest pair first: c4 (p 1.0, clipped), c3 (.55), c1 (.95), c0 (.1, with its long B)
    a_len, b_len = len("Answer A to 0, short."), len("Answer B to 0, which is a little longer.")
    gap = a_len - b_len  # the same for every factory pair (one-digit numbers)
    assert mh.length_points == [
        (gap, pytest.approx(math.log((1 - 1e-6) / 1e-6))), (gap, pytest.approx(math.log(0.55 / 0.45))),
        (gap, pytest.approx(math.log(0.95 / 0.05))), (a_len - 200, pytest.approx(math.log(0.1 / 0.9)))]
    # ranks of the gap: c0 1, the rest tied at 3; of the score: c0 1, c3 2, c1 3, c4 4 -> 3/sqrt(3*5)
    assert mh.length_gap_spearman == pytest.approx(3 / math.sqrt(15))
    assert [r["status"] for r in mh.runs] == ["succeeded", "failed"]  # newest first


def test_review_and_gold(db, settings, seeded):
    admin, cids = seeded["admin"], seeded["cids"]
    with db.read() as s:
        rv = dashboard.review_comparison(s, actor=admin, comparison_id=cids[1])
    assert rv.response_a.startswith("Answer A") and rv.prompt_text.startswith("Prompt number")
    assert [j.annotator for j in rv.judgments] == ["ann0", "ann1"]
    assert rv.judgments[1].rationale == "A answers the question"
    assert rv.votes == {"a": 1, "b": 1, "tie": 0, "both_bad": 0}
    with db.read() as s, pytest.raises(NotFound):
        dashboard.review_comparison(s, actor=admin, comparison_id=99_999)

    for _ in range(2):  # a double click on Mark as gold: one change, one audit entry
        with db.begin() as s:
            dashboard.mark_gold(s, actor=admin, comparison_id=cids[0], choice="b")
    with db.read() as s:
        c = s.get(Comparison, cids[0])
        assert c.is_gold and c.gold_choice.value == "b" and c.status is ComparisonStatus.open
    with db.begin() as s, pytest.raises(PrefloopError):
        dashboard.mark_gold(s, actor=admin, comparison_id=cids[0], choice="left")
    for _ in range(2):  # a double click on Unmark gold: one change, one audit entry, no error
        with db.begin() as s:
            dashboard.unmark_gold(s, settings, actor=admin, comparison_id=cids[0])
    with db.read() as s:
        c = s.get(Comparison, cids[0])
        assert not c.is_gold and c.gold_choice is None and c.status is ComparisonStatus.complete
        actions = [e.action for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert actions[-2:] == ["gold.mark", "gold.unmark"] and actions.count("gold.mark") == 1, actions
    with db.read() as s:
        log = dashboard.audit_log(s, actor=admin, limit=2)
        assert [r.action for r in log] == ["gold.unmark", "gold.mark"] and log[0].actor == "boss"
        assert log[1].detail == {"comparison_id": cids[0], "choice": "b"}
        older = dashboard.audit_log(s, actor=admin, before_id=log[1].id)
        assert older and all(r.id < log[1].id for r in older)
        assert [r.action for r in dashboard.audit_log(s, actor=admin, action="settings.update")] == \
            ["settings.update"]
        assert "gold.mark" in dashboard.audit_actions(s, actor=admin)


def test_annotators_are_refused_everywhere(db, settings, seeded):
    annotator, cid = seeded["ann"][0], seeded["cids"][0]
    calls = [
        lambda s: dashboard.overview(s, settings, actor=annotator),
        lambda s: dashboard.annotator_table(s, actor=annotator),
        lambda s: quality.annotator_quality(s, actor=annotator),
        lambda s: dashboard.model_health(s, actor=annotator),
        lambda s: dashboard.review_comparison(s, actor=annotator, comparison_id=cid),
        lambda s: dashboard.mark_gold(s, actor=annotator, comparison_id=cid, choice="a"),
        lambda s: dashboard.unmark_gold(s, settings, actor=annotator, comparison_id=seeded["gold"]),
        lambda s: dashboard.audit_log(s, actor=annotator),
        lambda s: dashboard.audit_actions(s, actor=annotator),
        lambda s: dashboard.campaign_options(s, settings, actor=annotator),
        lambda s: campaign.update_options(s, settings, actor=annotator, gold_rate=0.1),
    ]
    for call in calls:
        with db.begin() as s, pytest.raises(PermissionDenied):
            call(s)
    with db.read() as s:
        assert not s.get(Comparison, cid).is_gold


def test_no_actor_is_refused(db, settings, seeded):
    with db.read() as s:
        with pytest.raises(PermissionDenied):
            dashboard.overview(s, settings, actor=None)
        with pytest.raises(PermissionDenied):
            dashboard.annotator_table(s, actor=None)


def test_model_agreement_uses_the_recent_sample_only(db, seeded):
    cids = seeded["cids"]
    with db.begin() as s:
        s.execute(update(Comparison).where(Comparison.id == cids[0]).values(model_p_a=0.1))
        s.execute(update(Comparison).where(Comparison.id == cids[1]).values(model_p_a=0.95))
    with db.read() as s:
        full = quality.annotator_quality(s, actor=seeded["admin"])
        top = s.scalar(select(func.max(Judgment.id)))
        # judgment ids 1-4 are c0 (ann0 a, ann1 a) and c1 (ann0 b, ann1 a): keep only the last
        recent = quality.annotator_quality(s, actor=seeded["admin"], model_sample=top - 3)
    by, rec = {a.username: a for a in full.annotators}, {a.username: a for a in recent.annotators}
    assert (by["ann0"].n_model, by["ann0"].n_model_agree, by["ann1"].n_model, by["ann1"].n_model_agree) == (2, 0, 2, 1)
    assert (rec["ann0"].n_model, rec["ann1"].n_model, rec["ann1"].n_model_agree) == (0, 1, 1)
    assert [a.n for a in recent.annotators] == [a.n for a in full.annotators]  # counts use everything
    # length figures are running counts now: every judgment, no sample
    assert sum(a.n_length_decisive for a in recent.annotators) == 6
