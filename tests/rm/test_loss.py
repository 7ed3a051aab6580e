"""The Bradley–Terry loss, margins and the Rao–Kupper likelihood with ties on hand-computed values."""

import math

import numpy as np
import pytest
import torch

from rm.data import A_WINS, B_WINS, BOTH_BAD, TIE, PairData
from rm.train import TrainConfig, _margins, fit_temperature, preference_loss, train_ensemble


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_win_with_margin_is_minus_log_sigmoid_of_gap_minus_margin():
    loss = preference_loss(torch.tensor([0.5]), torch.tensor([A_WINS]), torch.tensor([0.2]))
    assert loss.item() == pytest.approx(-math.log(_sig(0.3)), rel=1e-6)


def test_b_wins_uses_the_negative_gap():
    loss = preference_loss(torch.tensor([0.5]), torch.tensor([B_WINS]), 0.0)
    assert loss.item() == pytest.approx(-math.log(_sig(-0.5)), rel=1e-6)


def test_tie_is_rao_kupper_mass_within_epsilon():
    # P(tie | d=0, ε=0.5) = σ(0.5) - σ(-0.5) = 0.244918...
    loss = preference_loss(torch.tensor([0.0]), torch.tensor([TIE]), 0.0, tie_epsilon=0.5)
    assert loss.item() == pytest.approx(-math.log(_sig(0.5) - _sig(-0.5)), rel=1e-6)
    assert loss.item() == pytest.approx(1.40684, abs=1e-4)
    loss = preference_loss(torch.tensor([1.2, -1.2]), torch.tensor([TIE, TIE]), 0.0, tie_epsilon=0.3)
    expected = -math.log(_sig(1.2 + 0.3) - _sig(1.2 - 0.3))
    assert loss.tolist() == pytest.approx([expected, expected], rel=1e-5)


def test_a_win_among_ties_uses_the_rao_kupper_threshold():
    # With ε = 0.3 and margin 0.2, A winning at d = 0.5 has probability σ(0.5 - 0.3 - 0.2) = 1/2.
    loss = preference_loss(torch.tensor([0.5, 0.5, 0.0]), torch.tensor([A_WINS, B_WINS, TIE]),
                           torch.tensor([0.2, 0.2, 0.0]), tie_epsilon=0.3)
    assert loss.tolist() == pytest.approx([math.log(2), -math.log(_sig(-0.5 - 0.3 - 0.2)),
                                           -math.log(_sig(0.3) - _sig(-0.3))], rel=1e-6)


def test_the_default_is_plain_bradley_terry_bit_for_bit():
    # rm.finetune calls the loss with its defaults on wins only: that must stay -log σ(±d - m).
    d = torch.linspace(-7, 7, 57, dtype=torch.float32)
    out = torch.tensor([A_WINS, B_WINS] * 28 + [A_WINS])
    m = torch.linspace(0, 1, 57)
    expected = -torch.nn.functional.logsigmoid(torch.where(out == B_WINS, -d, d) - m)
    assert torch.equal(preference_loss(d, out, m), expected)


@pytest.mark.parametrize("eps", [0.05, 0.5, 1.0, 3.0])
def test_the_three_outcome_probabilities_sum_to_one(eps):
    # A proper likelihood: P(A) + P(B) + P(tie) = σ(d-ε) + σ(-d-ε) + σ(d+ε) - σ(d-ε) = 1. With
    # σ(d) for wins (as before) the sum was 1 + P(tie), up to 1.76 at ε = 3.
    d = torch.linspace(-12, 12, 97, dtype=torch.float64)
    p = [torch.exp(-preference_loss(d, torch.full(d.shape, o), 0.0, tie_epsilon=eps))
         for o in (A_WINS, B_WINS, TIE)]
    np.testing.assert_allclose((p[0] + p[1] + p[2]).numpy(), 1.0, rtol=1e-9)


TRUE_GAPS = torch.tensor([-3.0, -1.0, 0.0, 0.25, 0.7, 1.0, 2.0, 4.0], dtype=torch.float64)


def minimise_expected_loss(true_eps, fit_epsilon):
    """``(d, ε)`` minimising the expected loss when outcomes are drawn from Rao–Kupper at gaps
    ``TRUE_GAPS`` and threshold ``true_eps``; ε is fitted (softplus(θ), from 0.69) or fixed."""
    probs = [torch.sigmoid(TRUE_GAPS - true_eps), torch.sigmoid(-TRUE_GAPS - true_eps)]
    probs.append(1 - probs[0] - probs[1])
    d = torch.zeros_like(TRUE_GAPS, requires_grad=True)
    theta = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([d, theta] if fit_epsilon else [d], lr=1.0, max_iter=500, tolerance_grad=1e-12,
                            tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def eps():
        return torch.nn.functional.softplus(theta) if fit_epsilon else true_eps

    def closure():
        opt.zero_grad()
        loss = sum((p * preference_loss(d, torch.full(d.shape, o), 0.0, tie_epsilon=eps())).sum()
                   for p, o in zip(probs, (A_WINS, B_WINS, TIE)))
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return d.detach().numpy(), float(eps())


@pytest.mark.parametrize("eps", [0.2, 0.5, 1.5])
def test_the_expected_loss_is_minimised_at_the_true_gap(eps):
    # Fisher consistency: with outcomes drawn from Rao–Kupper at gap d*, the expected loss
    # is smallest at d = d*. Wins scored by σ(d) put it at about 0.79 d* (ε = 0.5).
    d, _ = minimise_expected_loss(eps, fit_epsilon=False)
    np.testing.assert_allclose(d, TRUE_GAPS.numpy(), atol=1e-5)


@pytest.mark.parametrize("true_eps", [0.1, 0.5, 1.5])
def test_the_expected_loss_is_minimised_at_the_true_epsilon(true_eps):
    # Fitting ε with the gaps is consistent: the expected loss over (d, ε = softplus(θ)) is
    # smallest at (d*, ε*).
    d, eps = minimise_expected_loss(true_eps, fit_epsilon=True)
    np.testing.assert_allclose(d, TRUE_GAPS.numpy(), atol=1e-5)
    assert eps == pytest.approx(true_eps, abs=1e-5)


def test_tie_epsilon_may_be_one_differentiable_tensor_per_member():
    # train_ensemble fits ε = softplus(θ) per member: the loss takes an (M, 1) tensor of ε
    # broadcasting against (M, n) gaps, equal row by row to the float form, with a gradient.
    d = torch.tensor([[-1.0, 0.3, 2.0, 0.0], [0.5, -0.2, 1.0, 3.0]], dtype=torch.float64)
    out = torch.tensor([TIE, A_WINS, B_WINS, TIE])
    eps = torch.tensor([[0.2], [1.0]], dtype=torch.float64, requires_grad=True)
    loss = preference_loss(d, out, 0.1, tie_epsilon=eps)
    for k in range(2):
        assert torch.equal(loss[k], preference_loss(d[k], out, 0.1, tie_epsilon=eps[k, 0].item()))
    assert torch.autograd.gradcheck(lambda e: preference_loss(d, out, 0.1, tie_epsilon=e), (eps,))


def test_tie_loss_stays_finite_for_huge_gaps():
    loss = preference_loss(torch.tensor([80.0]), torch.tensor([TIE]), 0.0, tie_epsilon=0.5)
    assert torch.isfinite(loss).all() and loss.item() == pytest.approx(80 - math.log(2 * math.sinh(0.5)), rel=1e-3)


def test_strength_maps_to_documented_margins():
    cfg = TrainConfig()
    assert _margins(np.array([0, 1, 2, 3]), cfg.strength_margins).tolist() == pytest.approx(list(cfg.strength_margins))
    assert cfg.strength_margins[0] == 0.0
    assert list(cfg.strength_margins) == sorted(cfg.strength_margins)


def test_both_bad_pairs_are_dropped_by_the_trainer():
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(40, 4)).astype(np.float32)
    out = np.array([A_WINS, B_WINS, TIE, BOTH_BAD] * 5)
    data = PairData(feat, np.arange(20), np.arange(20, 40), out)
    ens = train_ensemble(data, TrainConfig(n_members=2), seed=0)
    assert ens.info["n_both_bad_dropped"] == 5 and ens.info["n_judgments"] == 15 and ens.info["n_pairs"] == 15


def test_info_counts_judgments_and_distinct_pairs_apart():
    """Two raters on one pair (once shown swapped) are two judgments of one pair."""
    feat = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    data = PairData(feat, np.array([0, 1, 2, 4]), np.array([1, 0, 3, 5]),
                    np.array([A_WINS, B_WINS, A_WINS, TIE]))
    ens = train_ensemble(data, TrainConfig(n_members=2), seed=0)
    assert ens.info["n_judgments"] == 4 and ens.info["n_pairs"] == 3


def test_fit_temperature_recovers_a_known_scale():
    rng = np.random.default_rng(1)
    true_gap = rng.normal(scale=1.5, size=20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-true_gap))
    assert fit_temperature(true_gap * 3.0, y) == pytest.approx(3.0, rel=0.1)


def test_ties_with_zero_tie_epsilon_are_refused_not_trained_into_nan():
    # ε = 0 gives a tie probability 0: L-BFGS returned NaN weights without a word.
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(40, 4)).astype(np.float32)
    data = PairData(feat, np.arange(20), np.arange(20, 40), [TIE, A_WINS] * 10)
    with pytest.raises(ValueError, match="tie_epsilon"):
        train_ensemble(data, TrainConfig(n_members=2, tie_epsilon=0.0), seed=0)
    no_ties = PairData(feat, np.arange(20), np.arange(20, 40), [B_WINS, A_WINS] * 10)
    ens = train_ensemble(no_ties, TrainConfig(n_members=2, tie_epsilon=0.0), seed=0)
    assert np.isfinite(ens.params["w"]).all()
