"""The promotion gate's paired test: both models on the same held-out judgments, clustered by comparison.

The end-to-end gate (a model trained on contradicting labels is rejected, one trained on more
labels of the same kind promoted, the paired counts recorded) is ``test_promotion_gate_end_to_end``
in ``tests/test_retrain.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from annotate import retrain

NAN = float("nan")


def _counts(n: int, new_only: int, active_only: int, votes: int = 1) -> retrain.PairedComparison:
    """``n`` comparisons with ``votes`` decisive votes each: the new model alone right on ``new_only`` of
    them, the active model alone on ``active_only``, both right on the rest."""
    new = np.repeat(np.r_[np.ones(new_only), np.zeros(active_only), np.ones(n - new_only - active_only)], votes)
    act = np.repeat(np.r_[np.zeros(new_only), np.ones(active_only), np.ones(n - new_only - active_only)], votes)
    return retrain.paired_comparison(new, act, np.repeat(np.arange(n), votes))


def _accuracies(paired: retrain.PairedComparison) -> tuple[float, float]:
    """New and active accuracy of :func:`_counts`'s models (both right where they agree)."""
    return 1 - paired.active_only / paired.n_pairs, 1 - paired.new_only / paired.n_pairs


def _decide(paired: retrain.PairedComparison, tolerance: float = 0.01, confidence: float = 0.95):
    """The gate allowing for noise (``PREFLOOP_PROMOTE_CONFIDENCE=0.95``; the default, 0.5, is the accuracy rule)."""
    return retrain.promotion_decision(*_accuracies(paired), tolerance, has_active=True, n_held_out=paired.n_pairs,
                                      new_n_train=100, active_n_train=90, paired=paired, confidence=confidence)


def test_the_default_confidence_is_the_accuracy_rule_with_the_counts_in_the_reason():
    """At 0.5 (the default) the paired gate decides exactly as "promoted unless its accuracy is worse by more
    than the tolerance" on every count of disagreements, and the reason claims nothing about noise."""
    assert retrain.GATE_CONFIDENCE == 0.5
    for tolerance in (0.0, 0.01, 0.05):
        for new_only in range(0, 41, 3):
            for active_only in range(0, 41, 3):
                paired = _counts(200, new_only, active_only)
                new, active = _accuracies(paired)
                ok, reason = retrain.promotion_decision(new, active, tolerance, has_active=True, n_held_out=200,
                                                        paired=paired)
                plain = retrain.promotion_decision(new, active, tolerance, has_active=True, n_held_out=200)[0]
                # Exactly at the tolerance the two float computations may round apart: skip that edge.
                if abs((new - active) + tolerance) > 1e-9:
                    assert ok is plain, (tolerance, new_only, active_only, reason)
                assert "noise" not in reason and f"alone right on {new_only} pairs" in reason
    ok, reason = retrain.promotion_decision(*_accuracies(_counts(212, 18, 22)), 0.01, has_active=True,
                                            n_held_out=212, paired=_counts(212, 18, 22))
    assert ok is False and reason == ("held-out accuracy 0.8962 is worse than the active model's 0.9151 on the "
                                      "same 212 pairs by more than the 0.01 tolerance (the new model alone right on "
                                      "18 pairs, the active model alone on 22; p=0.383, below 0.5)")


def test_paired_counts_cluster_the_votes_of_one_comparison():
    # Comparison 7: three votes, the new model right on two, the active one on one: d = +1.
    # Comparison 8: both models pick the same side: d = 0 whatever the votes say.
    # Comparison 9: an exact tie in the new model's reward (0.5) against a wrong active model: d = +0.5.
    # Comparison 10: the active model alone right: d = -1. The NaN (a tie vote) counts nowhere.
    new = [1, 1, 0, 1, 0, 0.5, 0, NAN]
    act = [0, 0, 1, 1, 0, 0.0, 1, NAN]
    comparison = [7, 7, 7, 8, 8, 9, 10, 10]
    p = retrain.paired_comparison(new, act, comparison)
    assert (p.n_pairs, p.n_votes, p.new_only, p.active_only) == (4, 7.0, 2, 1)
    assert p.diff == pytest.approx(1 + 0 + 0.5 - 1)
    assert p.sum_sq == pytest.approx(1 + 0 + 0.25 + 1)
    assert p.sum_dv == pytest.approx(3 * 1 + 2 * 0 + 1 * 0.5 + 1 * -1)
    assert p.sum_v_sq == pytest.approx(9 + 4 + 1 + 1)


def test_without_tolerance_the_statistic_is_mcnemars():
    p = _counts(200, 12, 20)
    assert p.z(0.0) == pytest.approx((12 - 20) / math.sqrt(12 + 20))


def test_votes_on_one_pair_are_not_independent_evidence():
    """Three votes on each of 40 pairs weigh as much as one vote on each: the pairs are the sample."""
    one, three = _counts(40, 2, 9), _counts(40, 2, 9, votes=3)
    assert three.n_votes == 3 * one.n_votes
    assert three.p_worse(0.01) == pytest.approx(one.p_worse(0.01))


def test_a_lower_accuracy_within_noise_is_promoted():
    """1.9 points lower on 212 pairs where the models disagree on 40: the accuracy rule rejected it
    (worse by more than the 1-point tolerance), though 22 against 18 is a coin's toss."""
    paired = _counts(212, 18, 22)
    ok, reason = _decide(paired)
    assert ok is True, reason
    assert reason.startswith("held-out accuracy 0.8962 vs active 0.9151 on the same 212 pairs: not worse by "
                             "more than the 0.01 tolerance beyond noise (the new model alone right on 18 pairs, "
                             "the active model alone on 22; p=0.")
    assert reason.endswith(", rejected only below 0.05)")
    assert retrain.promotion_decision(*_accuracies(paired), 0.01, has_active=True, n_held_out=212)[0] is False
    assert _decide(paired, confidence=0.8)[0] is True  # p = 0.38: not below 0.2 either


def test_a_clear_regression_is_rejected():
    ok, reason = _decide(_counts(212, 3, 30))
    assert ok is False
    assert "is worse than the active model's" in reason and "on the same 212 pairs by more than the 0.01 " \
        "tolerance, beyond noise (the new model alone right on 3 pairs, the active model alone on 30; p<0.001, " \
        "below 0.05)" in reason


@pytest.mark.parametrize("active_only, promoted", [(21, True), (22, False)])
def test_the_boundary_is_one_sided_95_percent(active_only, promoted):
    """200 pairs, the new model alone right on 10: p = 0.052 with 21 against it (promoted), 0.038 with 22."""
    paired = _counts(200, 10, active_only)
    assert (paired.p_worse(0.01) >= 0.05) is promoted
    ok, reason = _decide(paired)
    assert ok is promoted, reason


def test_the_tolerance_is_allowed_for():
    """The same counts: worse beyond noise than the active model, not worse than it by more than 5 points."""
    paired = _counts(200, 10, 24)
    assert _decide(paired, tolerance=0.0)[0] is False
    assert _decide(paired, tolerance=0.05)[0] is True


def test_better_or_identical_models_are_promoted():
    ok, reason = _decide(_counts(200, 25, 5))
    assert ok is True and ": not worse (" in reason
    identical = _counts(200, 0, 0)
    assert identical.p_worse(0.01) == 1.0 and identical.p_worse(0.0) == 0.5
    assert _decide(identical, tolerance=0.0)[0] is True


def test_the_early_cases_do_not_look_at_the_paired_counts():
    regression = _counts(200, 0, 100)
    assert retrain.promotion_decision(0.5, None, 0.01, has_active=False, paired=regression) == (True, "first model")
    ok, reason = retrain.promotion_decision(0.5, 0.9, 0.01, has_active=True, active_loadable=False,
                                            n_held_out=200, paired=regression)
    assert ok is True and "cannot be loaded" in reason
    few = retrain.MIN_HELD_OUT_PAIRS - 1
    ok, reason = retrain.promotion_decision(0.5, 0.9, 0.01, has_active=True, n_held_out=few, new_n_train=50,
                                            active_n_train=40, paired=_counts(few, 0, few))
    assert ok is True and f"only {few} decisive held-out pairs" in reason
    ok, reason = retrain.promotion_decision(NAN, 0.9, 0.01, has_active=True, n_held_out=200,
                                            paired=_counts(200, 50, 0))
    assert ok is False and reason == "no held-out labels to compare with the active model"


@pytest.mark.parametrize("n", [60, 250])
def test_a_model_exactly_at_the_tolerance_is_rejected_about_5_percent_of_the_time(n):
    """Simulated gates where the new model is worse by exactly the tolerance (the null's edge): the
    normal approximation keeps the false rejections near the nominal 5% (2,000 gates, seeded)."""
    rng = np.random.default_rng(n)
    tolerance, discordant = 0.01, 0.3
    p_new = discordant / 2 - tolerance / 2  # P(new alone right) - P(active alone right) = -tolerance
    rejected = 0
    for _ in range(2000):
        u = rng.random(n)
        new_only, active_only = int((u < p_new).sum()), int(((u >= p_new) & (u < discordant)).sum())
        rejected += _counts(n, new_only, active_only).p_worse(tolerance) < 0.05
    assert 0.03 <= rejected / 2000 <= 0.07, rejected


def test_the_job_records_the_paired_counts_in_a_jsonable_form():
    d = _counts(200, 10, 21).to_dict(0.01)
    assert d["n_pairs"] == 200 and d["new_only"] == 10 and d["active_only"] == 21 and d["diff_votes"] == -11
    assert d["p_worse"] == pytest.approx(0.0524, abs=1e-3)
    assert retrain.paired_comparison([], [], []).to_dict(0.0)["z"] is not None  # nothing to compare: z = 0


@pytest.mark.parametrize("value, ok", [("0.5", True), ("0.95", True), ("0.49", False), ("1", False),
                                       ("nan", False), ("sure", False)])
def test_the_gate_confidence_is_a_checked_setting(value, ok):
    from annotate.errors import ConfigError
    from annotate.settings import load_settings

    env = {"PREFLOOP_PROMOTE_CONFIDENCE": value}
    if ok:
        assert load_settings(env).promote_confidence == float(value)
    else:
        with pytest.raises(ConfigError, match="PREFLOOP_PROMOTE_CONFIDENCE"):
            load_settings(env)
    assert load_settings({}).promote_confidence == retrain.GATE_CONFIDENCE
    with pytest.raises(ConfigError, match="PREFLOOP_PROMOTE_TOLERANCE"):
        load_settings({"PREFLOOP_PROMOTE_TOLERANCE": "-0.1"})
