"""Quality metrics on hand-computed cases, the adaptive-overlap hook, and a seeded
scenario where simulated annotators with known behaviour go through the real
queue and the console flags the bad ones."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import update

from annotate import dashboard, judgments, quality, queue
from annotate.campaign import get_options
from annotate.models import Comparison, ComparisonStatus, utcnow
from tests.factories import make_comparisons, make_user

# --------------------------------------------------------------------------- pure metrics


def test_cohen_kappa_hand_computed():
    # po = 4/6; marginals r1 a3 b2 tie1, r2 a3 b3 -> pe = (9 + 6) / 36; kappa = (24-15)/(36-15) = 3/7
    assert quality.cohen_kappa(list("aabbat"), list("abbbaa")) == pytest.approx(3 / 7)
    assert quality.cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    # systematic disagreement on a balanced set: po = 0, pe = 1/2 -> -1
    assert quality.cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    assert quality.cohen_kappa([], []) is None
    # the same kind of table given directly: rater 1 a3 b2 t1, rater 2 a3 b3; po = 4/6,
    # pe = (3*3 + 2*3 + 1*0) / 36 = 15/36 -> kappa = (24-15)/(36-15) = 3/7
    assert quality.kappa_from_table({("a", "a"): 2, ("a", "b"): 1, ("t", "a"): 1, ("b", "b"): 2}) \
        == pytest.approx(3 / 7)


def test_krippendorff_alpha_nominal_hand_computed():
    # units (a,a) (a,b) (b,b): Do = 2/6, De = 2*3*3/(6*5) = 0.6 -> alpha = 1 - (1/3)/0.6 = 4/9
    vc = quality.value_counts_matrix([{"a": 2}, {"a": 1, "b": 1}, {"b": 2}], "nominal")
    assert quality.krippendorff_alpha(vc, "nominal") == pytest.approx(4 / 9)


def test_krippendorff_alpha_ordinal_ties_in_the_middle():
    # units (a,a) (a,tie) (tie,b) (b,b); n_a=3 n_tie=2 n_b=3, n=8
    # delta(a,tie) = delta(tie,b) = (5/2)^2 = 6.25, delta(a,b) = (8-3)^2 = 25
    # alpha = 1 - (n-1) * sum(o*delta) / sum(n_c n_k delta) = 1 - 7*25/600 = 17/24
    units = [{"a": 2}, {"a": 1, "tie": 1}, {"tie": 1, "b": 1}, {"b": 2}]
    assert quality.krippendorff_alpha(quality.value_counts_matrix(units, "ordinal"), "ordinal") \
        == pytest.approx(17 / 24)
    # both_bad is missing for the ordinal scale: adding it to a unit changes nothing
    with_bb = [dict(u) for u in units]
    with_bb[0]["both_bad"] = 1
    assert quality.krippendorff_alpha(quality.value_counts_matrix(with_bb, "ordinal"), "ordinal") \
        == pytest.approx(17 / 24)
    # a tie next to "a" disagrees less than "b" next to "a"
    near = [{"a": 2}, {"a": 1, "tie": 1}, {"b": 2}, {"tie": 2}]
    far = [{"a": 2}, {"a": 1, "b": 1}, {"b": 2}, {"tie": 2}]
    assert quality.krippendorff_alpha(quality.value_counts_matrix(near)) > \
        quality.krippendorff_alpha(quality.value_counts_matrix(far))


def test_alpha_from_coincidence_matches_the_krippendorff_package():
    # the hand-computed cases, through the coincidence matrix the SQL aggregate builds
    nominal = quality.value_counts_matrix([{"a": 2}, {"a": 1, "b": 1}, {"b": 2}], "nominal")
    assert quality.alpha_from_coincidence(quality.coincidence_from_units(nominal), "nominal") == pytest.approx(4 / 9)
    ordinal = quality.value_counts_matrix([{"a": 2}, {"a": 1, "tie": 1}, {"tie": 1, "b": 1}, {"b": 2}])
    assert quality.alpha_from_coincidence(quality.coincidence_from_units(ordinal), "ordinal") \
        == pytest.approx(17 / 24)
    rng = np.random.default_rng(11)
    for _ in range(5):
        vc = rng.integers(0, 3, size=(40, 3)).astype(float)
        for level in ("nominal", "ordinal"):
            assert quality.alpha_from_coincidence(quality.coincidence_from_units(vc), level) \
                == pytest.approx(quality.krippendorff_alpha(vc, level))


def test_coincidence_rows_add_up_to_the_unit_matrix():
    # a unit (a, a, tie, both_bad): each judgment's row share, summed, is the unit's coincidence matrix
    unit = {"a": 2, "tie": 1, "both_bad": 1}
    total = np.zeros((4, 4))
    for own, count in unit.items():
        others = {k: v - (k == own) for k, v in unit.items()}
        total += quality.coincidence_rows(own, others, quality.CHOICES) * count
    expected = quality.coincidence_from_units(quality.value_counts_matrix([unit], "nominal"))
    assert np.allclose(total, expected)
    # ordinal: both_bad is missing, so the unit has 3 pairable values
    ordinal = sum(quality.coincidence_rows(own, {k: v - (k == own) for k, v in unit.items()},
                                           quality.ORDINAL_ORDER) * count for own, count in unit.items())
    assert np.allclose(ordinal, quality.coincidence_from_units(quality.value_counts_matrix([unit])))


def test_krippendorff_alpha_undefined_cases():
    assert quality.krippendorff_alpha(np.zeros((0, 3))) is None
    assert quality.krippendorff_alpha(quality.value_counts_matrix([{"a": 1}, {"b": 1}])) is None
    assert quality.krippendorff_alpha(quality.value_counts_matrix([{"a": 2}, {"a": 3}])) is None


def test_flip_left_and_longer_rates():
    assert quality.flip_rate([("a", "b"), ("a", "a"), ("tie", "tie"), ("b", "tie")]) == (2, 4)
    assert quality.flip_rate([]) == (0, 0)
    # (choice, a_on_left): a shown left -> left; b with a left -> right; a right -> right; b with a right -> left
    assert quality.left_rate([("a", True), ("b", True), ("a", False), ("tie", True), ("b", False),
                              ("a", None)]) == (2, 4)
    assert quality.left_rate([("a", True)] * 3 + [("b", False)]) == (4, 4)
    # (choice, len_a, len_b): longer chosen, shorter chosen, equal skipped, longer chosen, tie skipped
    assert quality.longer_wins_rate([("a", 10, 5), ("b", 10, 5), ("a", 3, 3), ("b", 2, 9), ("tie", 1, 5)]) \
        == (2, 3)


def test_calibration_bins_hand_computed():
    bins = quality.calibration_bins([0.05, 0.15, 0.12, 0.95, 1.0], [0, 1, 0, 1, 1], n_bins=10)
    assert len(bins) == 10
    assert (bins[0].count, bins[0].predicted, bins[0].observed) == (1, pytest.approx(0.05), 0.0)
    assert (bins[1].count, bins[1].predicted, bins[1].observed) == (2, pytest.approx(0.135), 0.5)
    assert (bins[9].count, bins[9].predicted, bins[9].observed) == (2, pytest.approx(0.975), 1.0)
    assert bins[5].count == 0 and bins[5].predicted is None
    with pytest.raises(ValueError):
        quality.calibration_bins([0.1], [1, 0])


def test_pearson_from_sums_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=50)
    y = 2 * x + rng.normal(size=50)
    sums = (len(x), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum())
    assert quality.pearson_from_sums(*sums) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert quality.pearson_from_sums(2, 1, 1, 1, 1, 1) is None


def test_median_from_log_histogram_is_within_one_bucket():
    per_e = quality.LOG_BUCKETS_PER_E
    values = [400.0, 900.0, 2500.0, 2600.0, 7000.0, 8000.0, 20000.0]
    hist: dict[int, int] = {}
    for v in values:
        b = math.floor(math.log(v) * per_e)
        hist[b] = hist.get(b, 0) + 1
    median = quality.median_from_log_histogram(hist)
    assert abs(math.log(median) - math.log(2600.0)) <= 1 / per_e
    assert quality.median_from_log_histogram({}) is None
    # one bucket of four: the two middle values are read at 3/8 and 5/8 of it, and averaged
    assert quality.median_from_log_histogram({10: 4}, per_e=1) == pytest.approx(
        (math.exp(10.375) + math.exp(10.625)) / 2)
    assert quality.median_from_log_histogram({10: 3}, per_e=1) == pytest.approx(math.exp(10.5))


def _log_histogram(values, per_e: int) -> dict[int, int]:
    buckets, counts = np.unique(np.floor(np.log(values) * per_e).astype(int), return_counts=True)
    return dict(zip(buckets.tolist(), counts.tolist()))


def test_median_of_two_values_far_apart_is_their_mean():
    """An even count's median is the mean of its two middle values, not the top of the lower one's bucket."""
    per_e = quality.LOG_BUCKETS_PER_E
    median = quality.median_from_log_histogram(_log_histogram([400.0, 20_000.0], per_e))
    assert abs(math.log(median) - math.log(10_200.0)) <= 1 / per_e


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 999, 1000])
def test_median_from_log_histogram_stays_within_one_bucket_of_numpy(n):
    """Times per judgment are roughly log-normal; a wide spread puts the middle values in different buckets."""
    per_e = quality.LOG_BUCKETS_PER_E
    for seed in range(50):
        rng = np.random.default_rng([n, seed])
        values = rng.lognormal(mean=math.log(5000.0), sigma=rng.choice([0.05, 1.0, 3.0]), size=n)
        median = quality.median_from_log_histogram(_log_histogram(values, per_e), per_e)
        assert abs(math.log(median) - math.log(np.median(values))) <= 1 / per_e, (n, seed)


def test_flags_thresholds():
    t = quality.Thresholds()
    base = quality.AnnotatorStats(annotator_id=1, username="x")
    assert quality.flags_for(base, t) == []
    lefty = replace(base, n=40, n_decisive=40, n_left=38)
    assert "left_bias" in quality.flags_for(lefty, t)
    # same rate on too few judgments is not flagged
    assert "left_bias" not in quality.flags_for(replace(base, n=10, n_decisive=10, n_left=10), t)
    assert "left_bias" not in quality.flags_for(replace(base, n=40, n_decisive=40, n_left=22), t)
    assert quality.flags_for(replace(base, n_gold=10, n_gold_correct=3), t) == ["gold"]
    assert quality.flags_for(replace(base, n_gold=10, n_gold_correct=7), t) == []
    assert quality.flags_for(replace(base, kappa=0.1, kappa_shared=30), t) == ["low_kappa"]
    assert quality.flags_for(replace(base, n_probes=10, n_flips=7), t) == ["flips"]
    assert quality.flags_for(replace(base, n_timed=30, median_ms_per_1k_chars=1000.0), t) == ["speed"]
    assert quality.flags_for(replace(base, n_timed=30, median_ms_per_1k_chars=9000.0), t) == []


def test_left_bias_is_flagged_however_many_judgments():
    # Over ~1,100+ decisive judgments a strong left clicker's binomial p-value underflows to
    # exactly 0.0; that is the strongest evidence there is, not "no p-value".
    t = quality.Thresholds()
    base = quality.AnnotatorStats(annotator_id=1, username="x")
    for n, left in [(2_000, 2_000), (20_000, 14_000), (1_100, 1_100), (200, 140)]:
        lefty = replace(base, n=n, n_decisive=n, n_left=left)
        assert lefty.left_p_value is not None and lefty.left_p_value < t.left_binomial_p
        assert quality.flags_for(lefty, t) == ["left_bias"], (n, left)
    # a balanced annotator with as many judgments is not flagged
    assert quality.flags_for(replace(base, n=20_000, n_decisive=20_000, n_left=10_050), t) == []


def test_wilson_interval_hand_computed():
    # 3 of 3: centre (1 + z²/6) / (1 + z²/3), half-width z·sqrt(z²/36) / (1 + z²/3), z = 1.96
    low, high = quality.wilson_interval(3, 3)
    assert (low, high) == (pytest.approx(0.4385, abs=1e-4), 1.0)
    assert quality.wilson_interval(30, 30)[0] == pytest.approx(0.8865, abs=1e-4)
    assert quality.wilson_interval(0, 4) == (0.0, pytest.approx(0.4899, abs=1e-4))
    low, high = quality.wilson_interval(50, 100)
    assert (low + high) / 2 == pytest.approx(0.5) and high - low == pytest.approx(0.1923, abs=1e-4)
    assert quality.wilson_interval(0, 0) is None


def _flag_probability(flag: str, n: int, p: float, **counts) -> float:
    """The exact chance that an annotator whose true rate is ``p`` is flagged ``flag`` after ``n`` observations."""
    from scipy.stats import binom

    base = quality.AnnotatorStats(annotator_id=1, username="x")
    fields = {"gold": ("n_gold", "n_gold_correct"), "flips": ("n_probes", "n_flips")}[flag]
    return sum(binom.pmf(k, n, p) for k in range(n + 1)
               if flag in quality.flags_for(replace(base, **{fields[0]: n, fields[1]: k})))


def test_gold_and_flip_flags_are_not_raised_on_chance():
    """An annotator right on 85 % of gold pairs scored under 70 % on 5 of them one time in six, and was
    flagged "low gold accuracy"; one who answers a repeat differently 15 % of the time was flagged
    "inconsistent" as often on 5 probes. A flag now needs the evidence the side-bias flag needs."""
    for n in (5, 10, 20):
        assert _flag_probability("gold", n, 0.85) < 0.01, n
        assert _flag_probability("flips", n, 0.15) < 0.01, n
    # chance-level answers are still caught once there is evidence
    assert _flag_probability("gold", 20, 0.25) > 0.99
    assert _flag_probability("gold", 20, 0.5) > 0.5
    assert _flag_probability("flips", 10, 1.0) == pytest.approx(1.0)
    assert _flag_probability("flips", 20, 0.5) > 0.5
    base = quality.AnnotatorStats(annotator_id=1, username="x")
    assert quality.flags_for(replace(base, n_gold=5, n_gold_correct=3)) == []  # 60 %, 95 % interval 23-88 %
    assert quality.flags_for(replace(base, n_probes=5, n_flips=2)) == []


def test_every_rate_comes_with_its_count_and_the_flags_with_their_evidence():
    s = quality.AnnotatorStats(annotator_id=1, username="x", n=3, n_majority=3, n_majority_agree=3, kappa=1.0,
                               kappa_shared=3, n_model=2, n_model_agree=2, n_decisive=3, n_left=2)
    row = s.as_row()
    assert (row["majority_agreement"], row["majority_n"], row["kappa_pairings"], row["model_n"],
            row["decisive_n"]) == (1.0, 3, 3, 2, 3)
    assert row["majority_low"] == pytest.approx(0.4385, abs=1e-4) and row["majority_high"] == 1.0
    assert row["gold_low"] is None and row["flip_low"] is None
    bad = quality.AnnotatorStats(annotator_id=2, username="y", n_gold=12, n_gold_correct=3, n_probes=5, n_flips=5)
    assert quality.flags_for(bad) == ["gold", "flips"]
    assert quality.flag_evidence(bad, "gold") == "low gold accuracy (3 of 12 correct: 25%, 95% interval 9%–53%)"
    assert quality.flag_evidence(bad, "flips").startswith("inconsistent on repeats (5 of 5 repeats")


def test_needs_another_judgment_rules():
    assert quality.needs_another_judgment(["a", "b"], "b", None, None) == "disagreement"
    assert quality.needs_another_judgment(["a", "a"], "a", 0.5, (0, 0)) is None
    assert quality.needs_another_judgment(["a"], "a", 0.1, None) == "contradicts_model"
    assert quality.needs_another_judgment(["a"], "a", 0.3, None) is None  # not confident
    assert quality.needs_another_judgment(["tie"], "tie", 0.05, None) is None
    assert quality.needs_another_judgment(["b"], "b", 0.5, (3, 10)) == "low_gold_accuracy"
    assert quality.needs_another_judgment(["b"], "b", 0.5, (2, 4)) is None  # too few gold judgments


# --------------------------------------------------------------------------- adaptive overlap through submit


def _judge(db, settings, options, actor, want: str, now):
    """Serve the next pair to ``actor`` and answer ``want`` in canonical terms (a/b/tie/both_bad)."""
    with db.begin() as s:
        asg = queue.next_comparison(s, settings, options, actor=actor, now=now)
    assert asg is not None
    shown = want if want in ("tie", "both_bad") else ("left" if (want == "a") == asg.a_on_left else "right")
    with db.begin() as s:
        judgments.submit(s, settings, actor=actor, comparison_id=asg.comparison_id, shown=shown,
                         time_spent_ms=20_000, now=now)
    return asg.comparison_id


def _target(db, cid):
    with db.read() as s:
        c = s.get(Comparison, cid)
        return c.overlap_target, ComparisonStatus(c.status)


def test_agreement_completes_without_extension(db, settings):
    with db.begin() as s:
        people = [make_user(s, f"p{i}") for i in range(4)]
        (cid,) = make_comparisons(s, 1, overlap=2)
        options = replace(get_options(s, settings), gold_rate=0.0, probe_rate=0.0, max_overlap=3)
    now = utcnow()
    # Two agree: complete at 2.
    _judge(db, settings, options, people[0], "a", now)
    assert _target(db, cid) == (2, ComparisonStatus.open)
    _judge(db, settings, options, people[1], "a", now)
    assert _target(db, cid) == (2, ComparisonStatus.complete)


def test_disagreement_reopens_and_caps(db, settings):
    with db.begin() as s:
        people = [make_user(s, f"p{i}") for i in range(5)]
        (cid,) = make_comparisons(s, 1, overlap=2)
    now = utcnow()
    options = replace(settings_options(db, settings), gold_rate=0.0, probe_rate=0.0)
    _judge(db, settings, options, people[0], "a", now)
    _judge(db, settings, options, people[1], "b", now)
    assert _target(db, cid) == (3, ComparisonStatus.open)  # default max_overlap is 3
    _judge(db, settings, options, people[2], "tie", now)
    assert _target(db, cid) == (3, ComparisonStatus.complete)  # capped at max_overlap
    with db.read() as s:
        assert queue.next_comparison(s, settings, options, actor=people[3], now=now) is None


def test_a_late_judgment_that_disagrees_extends_a_full_pair_without_reopening_it(db, settings):
    """Two agree (complete at 2); a third annotator's judgment on a lease that had expired is kept
    (never lost) and disagrees. The extension raised the target to 3 and reopened the pair, though
    it already had 3 judgments: an open pair no one could be served (found by bench/soak.py)."""
    with db.begin() as s:
        people = [make_user(s, f"p{i}") for i in range(4)]
        (cid,) = make_comparisons(s, 1, overlap=2)
    options = replace(settings_options(db, settings), gold_rate=0.0, probe_rate=0.0)
    now = utcnow()
    with db.begin() as s:  # the late annotator's pair, served while there was room
        late = queue.next_comparison(s, settings, options, actor=people[2], now=now - timedelta(hours=1))
    assert late.comparison_id == cid
    _judge(db, settings, options, people[0], "a", now)
    _judge(db, settings, options, people[1], "a", now)
    assert _target(db, cid) == (2, ComparisonStatus.complete)
    with db.begin() as s:
        judgments.submit(s, settings, actor=people[2], comparison_id=cid, now=now,
                         shown="right" if late.a_on_left else "left")  # b
    with db.read() as s:
        assert s.get(Comparison, cid).judgment_count == 3
    assert _target(db, cid) == (3, ComparisonStatus.complete)


def settings_options(db, settings):
    with db.read() as s:
        return get_options(s, settings)


def test_contradicting_a_confident_model_gets_a_second_opinion(db, settings):
    with db.begin() as s:
        person, other = make_user(s, "p"), make_user(s, "q")
        cid_confident, cid_unsure = make_comparisons(s, 2, overlap=1, priority=lambda i: 10 - i)
        s.execute(update(Comparison).where(Comparison.id == cid_confident).values(model_p_a=0.95))
        s.execute(update(Comparison).where(Comparison.id == cid_unsure).values(model_p_a=0.6))
    options = replace(settings_options(db, settings), gold_rate=0.0, probe_rate=0.0)
    now = utcnow()
    assert _judge(db, settings, options, person, "b", now) == cid_confident
    assert _target(db, cid_confident) == (2, ComparisonStatus.open)
    assert _judge(db, settings, options, person, "b", now) == cid_unsure
    assert _target(db, cid_unsure) == (1, ComparisonStatus.complete)
    # the second opinion agrees with the model, so the two humans now disagree: that asks for a third
    assert _judge(db, settings, options, other, "a", now) == cid_confident
    assert _target(db, cid_confident) == (3, ComparisonStatus.open)  # humans now disagree with each other


def test_low_gold_accuracy_judge_gets_a_second_opinion(db, settings):
    with db.begin() as s:
        person = make_user(s, "p")
        *gold, last_gold = make_comparisons(s, 7, overlap=1, gold=True, tag="gold")  # gold answer "a"
        (plain,) = make_comparisons(s, 1, overlap=1, start=100, priority=lambda i: -1)
    options = replace(settings_options(db, settings), gold_rate=0.0, probe_rate=0.0)
    now = utcnow()
    with db.begin() as s:  # answer six gold pairs wrongly, directly (the queue's gold draw is random)
        for cid in gold:
            s.add(quality_judgment(cid, person.id, "b", now))
    with db.begin() as s:
        correct, n = quality.gold_accuracy_of(s, person.id)
    assert (correct, n) == (0, 6)
    # a seventh wrong gold answer goes through submit, so the overlap hook runs on a full gold pair
    # whose judge is below the gold-accuracy threshold: gold pairs themselves are never extended
    with db.begin() as s:
        judgments.submit(s, settings, actor=person, comparison_id=last_gold, shown="tie", time_spent_ms=20_000,
                         now=now)
    with db.read() as s:
        assert quality.gold_accuracy_of(s, person.id) == (0, 7)
        assert s.get(Comparison, last_gold).judgment_count == 1
    assert _target(db, last_gold) == (1, ComparisonStatus.open)  # gold pairs stay open to be served again
    with db.begin() as s:  # called again directly, it still refuses
        assert quality.extend_overlap_if_needed(s, last_gold, options) is False
    assert _target(db, last_gold) == (1, ComparisonStatus.open)
    # the same judge on an ordinary pair does get a second opinion
    assert _judge(db, settings, options, person, "a", now) == plain
    assert _target(db, plain) == (2, ComparisonStatus.open)


def quality_judgment(cid, annotator_id, choice, now):
    from annotate.models import Judgment

    return Judgment(comparison_id=cid, annotator_id=annotator_id, choice=choice, a_on_left=True,
                    time_spent_ms=10_000, was_gold=True, created_at=now)


# --------------------------------------------------------------------------- seeded scenario


def _run_scenario(db, settings, *, seed: int = 7):
    """Five simulated annotators judge 30 pairs (+10 gold) through the real queue.

    ``lefty`` always presses left, ``random`` answers uniformly at random and
    fast, ``good1..3`` give the hidden truth (90 %) and the gold answer.
    """
    rng = random.Random(seed)
    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        names = ["lefty", "random", "good1", "good2", "good3"]
        people = {n: make_user(s, n) for n in names}
        plain = make_comparisons(s, 30, overlap=5)
        gold = make_comparisons(s, 10, overlap=1, gold=True, start=1000)
        truth = {cid: rng.choice("ab") for cid in plain}
        for cid in gold:
            truth[cid] = rng.choice("ab")
            s.execute(update(Comparison).where(Comparison.id == cid).values(gold_choice=truth[cid]))
        options = replace(get_options(s, settings), gold_rate=0.3, probe_rate=0.25, max_overlap=5)
    behaviour = {n: random.Random(f"{seed}:{n}") for n in names}
    now = utcnow() - timedelta(days=1)
    active = list(names)
    while active:
        for name in list(active):
            now += timedelta(seconds=30)
            actor = people[name]
            with db.begin() as s:
                asg = queue.next_comparison(s, settings, options, actor=actor, now=now)
            if asg is None:
                active.remove(name)
                continue
            r = behaviour[name]
            if name == "lefty":
                shown, ms = "left", 1_500
            elif name == "random":
                shown, ms = r.choice(["left", "right", "tie", "both_bad"]), 800
            else:
                want = truth[asg.comparison_id]
                if r.random() < 0.1 and asg.comparison_id in plain:
                    want = "b" if want == "a" else "a"
                shown = "left" if (want == "a") == asg.a_on_left else "right"
                ms = 30_000 + r.randint(0, 20_000)
            with db.begin() as s:
                judgments.submit(s, settings, actor=actor, comparison_id=asg.comparison_id, shown=shown,
                                 time_spent_ms=ms, now=now)
    return admin, people


def test_scenario_flags_the_left_clicker_and_the_random_clicker(db, settings):
    admin, people = _run_scenario(db, settings)
    with db.read() as s:
        report = dashboard.annotator_table(s, actor=admin)
    by_name = {a.username: a for a in report.annotators}
    assert set(by_name) == set(people)
    lefty, rnd = by_name["lefty"], by_name["random"]
    assert lefty.left_rate == 1.0 and "left_bias" in lefty.flags
    assert lefty.n_probes >= quality.THRESHOLDS.flip_min_n and lefty.flip_rate == 1.0
    assert rnd.flags, "the random clicker is flagged"
    assert {"low_kappa", "gold"} & set(rnd.flags)
    for name in ("good1", "good2", "good3"):
        good = by_name[name]
        assert good.flags == [], (name, good.flags, good.as_row())
        assert good.gold_accuracy == 1.0 and good.n_gold >= quality.THRESHOLDS.gold_min_n
        assert good.kappa is not None and good.kappa > 0.2
        assert good.n_probes == 0 or good.flip_rate <= 0.3
    assert report.alpha_ordinal is not None and report.alpha_nominal is not None
    assert -1.0 <= report.alpha_ordinal < 0.9
    # pairwise kappa: two good annotators agree far better than the random one with anybody
    pk = {}
    for a, b, k, _ in report.pair_kappas:
        pk[(a, b)] = pk[(b, a)] = k
    assert pk[("good1", "good2")] > 0.5
    assert pk[("good1", "random")] < 0.3


def test_a_deactivated_annotator_is_marked_and_still_counts_for_the_others(db, settings):
    from annotate.models import User

    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        gone, stays = make_user(s, "gone"), make_user(s, "stays")
        cids = make_comparisons(s, 3, overlap=2)
    now = utcnow() - timedelta(minutes=5)
    with db.begin() as s:
        for cid in cids:
            for who in (gone, stays):
                s.add(quality_judgment(cid, who.id, "a", now))
        s.execute(update(User).where(User.id == gone.id).values(active=False))
    with db.read() as s:
        report = dashboard.annotator_table(s, actor=admin)
    by = {a.username: a for a in report.annotators}
    assert (by["gone"].active, by["stays"].active) == (False, True)
    assert by["gone"].as_row()["active"] is False
    assert (by["stays"].n_majority, by["stays"].n_majority_agree) == (3, 3)


def test_pairwise_kappa_pairs_a_judgment_in_the_period_with_votes_made_before_it(db, settings):
    """The heatmap only paired judgments that were *both* made in the period, while the per-annotator κ
    pairs each judgment of the period with the others' votes whenever made: over "last 7 days" an
    annotator who judged pairs the other had judged 8 days earlier had a κ with others and no cell."""
    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        early, late = make_user(s, "early"), make_user(s, "late")
        cids = make_comparisons(s, 4, overlap=2)
    now = utcnow()
    with db.begin() as s:
        for cid, (x, y) in zip(cids, ["aa", "bb", "ab", "tt"]):
            y, x = ("tie" if c == "t" else c for c in (y, x))
            s.add(quality_judgment(cid, early.id, x, now - timedelta(days=8)))
            s.add(quality_judgment(cid, late.id, y, now - timedelta(hours=1)))
    with db.read() as s:
        week = quality.annotator_quality(s, actor=admin, since=now - timedelta(days=7))
        everything = quality.annotator_quality(s, actor=admin)
    by = {a.username: a for a in week.annotators}
    assert set(by) == {"late"} and by["late"].kappa_shared == 4
    # (late, early): (a,a) (b,b) (b,a) (tie,tie): po 3/4; late a 1/4 b 2/4 tie 1/4, early a 2/4 b 1/4 tie 1/4:
    # pe = 2/16 + 2/16 + 1/16 = 5/16 -> κ = (12/16 - 5/16) / (11/16) = 7/11
    assert by["late"].kappa == pytest.approx(7 / 11)
    assert week.pair_kappas == [("early", "late", pytest.approx(7 / 11), 4)]
    assert everything.pair_kappas == week.pair_kappas  # each pairing once, whichever side is in the period
