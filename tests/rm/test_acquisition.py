"""Acquisition strategies: a contract every strategy meets, and ordering on fixed probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from rm.acquisition import (
    DEFAULT_STRATEGY,
    Pool,
    bald_scores,
    capped_order,
    get_strategy,
    make_pool,
    pair_features,
    priorities,
    select_strategy,
    strategy_names,
)

ALL = strategy_names()


def _pool(n=60, m=5, d=8, n_groups=None, seed=0, labelled=0) -> Pool:
    rng = np.random.default_rng(seed)
    probs = rng.uniform(0.05, 0.95, size=(m, n)).astype(np.float32)
    feats = rng.normal(size=(n, d)).astype(np.float32)
    groups = None if n_groups is None else rng.integers(0, n_groups, n)
    lab = rng.normal(size=(labelled, d)).astype(np.float32) if labelled else None
    return Pool(probs=probs, features=feats, groups=groups, labelled=lab)


# --------------------------------------------------------------------------- contract


def test_names_cover_the_required_strategies():
    for name in ("random", "margin", "bald", "thompson", "bald+diverse", "margin+diverse", "default"):
        assert name in ALL
    assert get_strategy("default").name == get_strategy(DEFAULT_STRATEGY).name == DEFAULT_STRATEGY


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("n_groups", [None, 7])
def test_select_returns_n_distinct_valid_ids(name, n_groups):
    pool = _pool(n_groups=n_groups, labelled=10)
    ids = get_strategy(name).select(pool, 16, np.random.default_rng(1))
    assert ids.dtype.kind == "i"
    assert len(ids) == 16
    assert len(set(ids.tolist())) == 16
    assert ids.min() >= 0 and ids.max() < len(pool)


@pytest.mark.parametrize("name", ALL)
def test_select_keeps_the_per_prompt_cap(name):
    """The module's promise for every ``select``: one pair per prompt while other prompts remain."""
    for seed in range(3):
        pool = _pool(n=100, n_groups=40, labelled=10, seed=seed)
        for n in (16, 50):
            ids = get_strategy(name).select(pool, n, np.random.default_rng(seed))
            groups = pool.groups[ids].tolist()
            assert len(set(groups)) == min(n, len(set(pool.groups.tolist()))), (seed, n, sorted(groups))


@pytest.mark.parametrize("name", ALL)
def test_select_is_deterministic_under_a_seed(name):
    pool = _pool(n_groups=20)
    s = get_strategy(name)
    a = s.select(pool, 10, np.random.default_rng(7))
    b = s.select(pool, 10, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(s.scores(pool, np.random.default_rng(3)), s.scores(pool, np.random.default_rng(3)))


@pytest.mark.parametrize("name", ALL)
def test_empty_pool_and_pools_smaller_than_n(name):
    s = get_strategy(name)
    empty = Pool(probs=np.zeros((5, 0), np.float32), features=np.zeros((0, 4), np.float32),
                 groups=np.zeros(0, int))
    assert len(s.select(empty, 8, np.random.default_rng(0))) == 0
    pr, sc = priorities(s, empty, 8, np.random.default_rng(0))
    assert pr.shape == sc.shape == (0,)
    tiny = _pool(n=3, n_groups=2)
    ids = s.select(tiny, 8, np.random.default_rng(0))
    assert sorted(ids.tolist()) == [0, 1, 2]
    assert len(s.select(tiny, 0, np.random.default_rng(0))) == 0


@pytest.mark.parametrize("name", ALL)
def test_works_without_features_or_groups(name):
    pool = Pool(probs=np.random.default_rng(0).uniform(size=(4, 30)))
    ids = get_strategy(name).select(pool, 9, np.random.default_rng(0))
    assert len(set(ids.tolist())) == 9


@pytest.mark.parametrize("name", ALL)
def test_priorities_are_a_consistent_queue_order(name):
    pool = _pool(n=100, n_groups=40)
    s = get_strategy(name)
    pr, score = priorities(s, pool, 8, np.random.default_rng(5), n_batches=3)
    assert pr.shape == score.shape == (100,)
    # A permutation: every pair has a distinct priority in (0, 1].
    assert len(np.unique(pr)) == 100 and pr.max() == 1.0 and pr.min() > 0
    order = np.argsort(-pr)
    # The first batch served is exactly what select() picks with the same generator state.
    rng = np.random.default_rng(5)
    s.scores(pool, rng)
    np.testing.assert_array_equal(order[:8], s.select(pool, 8, rng))
    # Beyond the selected batches the queue follows the score.
    tail = order[24:]
    assert np.all(np.diff(score[tail]) <= 1e-12)
    np.testing.assert_array_equal(pr, priorities(s, pool, 8, np.random.default_rng(5), n_batches=3)[0])


def test_unknown_strategy_names_say_what_exists():
    with pytest.raises(ValueError, match="bald"):
        get_strategy("bal")
    with pytest.raises(ValueError):
        get_strategy("bald+shiny")


def test_get_strategy_accepts_exactly_the_listed_names():
    """So the contract tests and the settings page cover every name a campaign can use."""
    bases = ["random", "margin", "bald", "thompson", "cover", "epig"]
    for name in bases + [f"{b}+{w}" for b in bases for w in ("diverse", "cover", "power")]:
        if name in ALL:
            assert get_strategy(name)
        else:
            with pytest.raises(ValueError, match="choose one of"):
                get_strategy(name)
    for name in ("random+cover", "random+power"):  # random scores are noise: nothing to weight or sharpen
        assert name not in ALL
        with pytest.raises(ValueError, match="unknown acquisition strategy"):
            get_strategy(name)


def test_cold_start_is_random_until_enough_labels():
    assert select_strategy("bald", 10, cold_start=64).name == "random"
    assert select_strategy("bald", 64, cold_start=64).name == "bald"
    assert select_strategy("default", 100, cold_start=64).name == DEFAULT_STRATEGY


def test_pool_validates_shapes():
    with pytest.raises(ValueError):
        Pool(probs=np.zeros((2, 5)), features=np.zeros((4, 3)))
    with pytest.raises(ValueError):
        Pool(probs=np.zeros((2, 5)), groups=np.zeros(3))
    assert len(Pool(probs=np.full(6, 0.5))) == 6


# --------------------------------------------------------------------------- ordering


def test_margin_picks_closest_to_half_first():
    p = np.array([0.9, 0.52, 0.1, 0.35, 0.49, 0.7])
    probs = np.stack([p, p, p])
    ids = get_strategy("margin").select(Pool(probs=probs), 3, np.random.default_rng(0))
    assert ids.tolist() == [4, 1, 3]


def test_epistemic_prefers_confident_disagreement_over_a_coin_toss():
    """Pair 0: members at 0.7 and 0.3 (a near coin toss with some disagreement); pair 1: members at 0.99 and
    0.8 (both prefer A, one much more). BALD asks pair 0 first (0.082 against 0.057 nats); the epistemic
    share of the uncertainty asks pair 1 first (0.17 against 0.12); pair 2, where both members agree, last."""
    probs = np.array([[0.7, 0.99, 0.9], [0.3, 0.8, 0.9]], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert get_strategy("bald").select(Pool(probs=probs), 3, rng).tolist() == [0, 1, 2]
    assert get_strategy("epistemic").select(Pool(probs=probs), 3, rng).tolist() == [1, 0, 2]
    scores = get_strategy("epistemic").scores(Pool(probs=probs), rng)
    assert scores[:2] == pytest.approx([0.118, 0.170], abs=0.002) and scores[2] == pytest.approx(0.0, abs=1e-6)


def test_bald_prefers_disagreement_over_agreed_uncertainty():
    agree = [0.5, 0.5, 0.5, 0.5]          # everyone unsure: aleatoric, nothing to learn
    disagree = [0.05, 0.95, 0.1, 0.9]     # members contradict each other: epistemic
    mild = [0.4, 0.6, 0.45, 0.55]
    probs = np.array([agree, disagree, mild]).T
    s = bald_scores(probs)
    assert s[0] == pytest.approx(0.0, abs=1e-6)
    assert s[1] > s[2] > s[0]
    assert get_strategy("bald").select(Pool(probs=probs), 3, np.random.default_rng(0)).tolist() == [1, 2, 0]
    # Margin, by contrast, cannot tell the first two apart from the mean alone.
    assert get_strategy("margin").scores(Pool(probs=probs), np.random.default_rng(0))[0] == pytest.approx(0.0)


def test_per_prompt_cap_spreads_over_prompts():
    # Prompt 0 holds the 5 most uncertain pairs; a batch of 4 takes its best and moves on.
    p = np.array([0.50, 0.51, 0.47, 0.53, 0.46, 0.60, 0.65, 0.70, 0.80])
    groups = np.array([0, 0, 0, 0, 0, 1, 2, 3, 4])
    ids = get_strategy("margin").select(Pool(probs=p[None, :], groups=groups), 4, np.random.default_rng(0))
    assert ids.tolist() == [0, 5, 6, 7]
    # Once every prompt has one pair in the batch, the second-best pair of prompt 0 comes next.
    ids = get_strategy("margin").select(Pool(probs=p[None, :], groups=groups), 6, np.random.default_rng(0))
    assert ids.tolist() == [0, 5, 6, 7, 8, 1]


def test_capped_order_is_identity_without_groups():
    np.testing.assert_array_equal(capped_order(np.array([3, 1, 2]), None, 2), [3, 1])


def _near_duplicate_pool():
    # 10 near-copies of one pair feature with the top scores, then 10 distinct pairs scored lower.
    rng = np.random.default_rng(0)
    base = rng.normal(size=16)
    dup = base + 0.01 * rng.normal(size=(10, 16))
    other = rng.normal(size=(10, 16))
    feats = np.concatenate([dup, other]).astype(np.float32)
    members = np.concatenate([np.tile([[0.1], [0.9]], (1, 10)),      # strong disagreement
                              np.tile([[0.2], [0.8]], (1, 10))], axis=1)   # a bit less
    return Pool(probs=members, features=feats), set(range(10))


@pytest.mark.parametrize("name", ["bald+diverse", "bald+cover", "cover"])
def test_diversity_avoids_near_duplicate_features(name):
    pool, dups = _near_duplicate_pool()
    plain = get_strategy("bald").select(pool, 5, np.random.default_rng(0))
    assert set(plain.tolist()) <= dups  # plain BALD fills the batch with copies
    ids = get_strategy(name).select(pool, 5, np.random.default_rng(0))
    assert len(dups & set(ids.tolist())) <= 2


def test_cover_counts_labelled_pairs_as_covered():
    # Two candidate directions equally uncertain; the labelled set already covers the first.
    feats = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32) * 3
    probs = np.full((4, 2), 0.5, dtype=np.float32)
    covered = np.tile([[3.0, 0.0]], (20, 1)).astype(np.float32)
    for name in ("cover", "margin+cover"):
        ids = get_strategy(name).select(Pool(probs=probs, features=feats, labelled=covered), 1,
                                        np.random.default_rng(0))
        assert ids.tolist() == [1], name
        ids = get_strategy(name).select(Pool(probs=probs, features=feats, labelled=covered[:, ::-1].copy()), 1,
                                        np.random.default_rng(0))
        assert ids.tolist() == [0], name


def test_thompson_follows_one_member_per_call():
    probs = np.array([[0.5, 0.9, 0.99], [0.99, 0.5, 0.9], [0.9, 0.99, 0.5]], dtype=np.float32)
    firsts = {int(get_strategy("thompson").select(Pool(probs=probs), 1, np.random.default_rng(s))[0])
              for s in range(20)}
    assert firsts == {0, 1, 2}


def test_make_pool_matches_member_probabilities():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(3, 10)).astype(np.float32)
    feat = rng.normal(size=(10, 4)).astype(np.float32)
    ia, ib = np.array([0, 2, 4]), np.array([1, 3, 5])
    pool = make_pool(rewards, feat, ia, ib, groups=["x", "y", "x"], labelled=(np.array([6]), np.array([7])),
                     scale=np.full(4, 2.0, np.float32))
    expected = 1 / (1 + np.exp(-(rewards[:, ia] - rewards[:, ib])))
    np.testing.assert_allclose(pool.probs, expected, rtol=1e-5)
    np.testing.assert_allclose(pool.features, (feat[ia] - feat[ib]) / 2.0, rtol=1e-6)
    np.testing.assert_allclose(pool.labelled, pair_features(feat, [6], [7], np.full(4, 2.0)), rtol=1e-6)
    assert pool.groups.tolist() == [0, 1, 0]


def test_epig_prefers_pairs_informative_about_the_pool():
    # Most open pairs vary along the first direction; one candidate lies along it, one across it.
    # Both are equally uncertain and equally long, so BALD and cover cannot tell them apart; EPIG
    # asks the one that teaches the model about the pairs it will score.
    rng = np.random.default_rng(0)
    targets = np.c_[rng.normal(size=40) * 3, rng.normal(size=40) * 0.1]
    feats = np.r_[[[0.0, 3.0], [3.0, 0.0]], targets].astype(np.float32)
    probs = np.full((3, len(feats)), 0.5, dtype=np.float32)
    strategy = get_strategy("epig")
    pool = Pool(probs=probs, features=feats)
    gain = strategy.scores(pool, np.random.default_rng(0))
    assert gain[1] > 5 * gain[0]
    first = strategy.select(pool, 1, np.random.default_rng(0))[0]
    assert abs(feats[first, 0]) > abs(feats[first, 1])


def test_epig_gain_matches_the_gaussian_formula():
    # One candidate, three targets, no labels: ½·mean_t ρ², Σ = I/λ, noise variance 1/w.
    from rm.acquisition import EpigStrategy

    s = EpigStrategy(ridge=0.5)
    zc = np.array([[1.0, 2.0]])
    zt = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    wc, wt = np.array([0.25]), np.array([0.2, 0.25, 0.1])
    cov = np.eye(2) / 0.5
    expected = np.mean([(zc[0] @ cov @ t) ** 2 / ((zc[0] @ cov @ zc[0] + 1 / wc[0]) * (t @ cov @ t + 1 / w))
                        for t, w in zip(zt, wt)]) / 2
    np.testing.assert_allclose(s._gain(zc, zt, wc, wt, cov), [expected], rtol=1e-12)


def test_epig_batch_does_not_repeat_what_it_already_asked():
    pool, dups = _near_duplicate_pool()
    ids = get_strategy("epig").select(pool, 5, np.random.default_rng(0))
    assert len(dups & set(ids.tolist())) <= 2


def test_power_sampling_draws_first_picks_in_proportion_to_score_to_the_beta():
    # Three pairs whose BALD scores stand 1 : 2 : 4; with beta = 2 the first pick goes 1 : 4 : 16.
    s = np.array([0.05, 0.1, 0.2])
    base = get_strategy("bald")
    power = get_strategy("bald+power")
    assert power.name == "bald+power" and power.beta == 2.0
    base.positive_scores = lambda pool, rng: s  # fixed scores: only the sampling is under test
    power.base = base
    pool = Pool(probs=np.full((2, 3), 0.5, np.float32))
    rng = np.random.default_rng(0)
    firsts = np.bincount([power.select(pool, 1, rng)[0] for _ in range(6000)], minlength=3) / 6000
    np.testing.assert_allclose(firsts, np.array([1, 4, 16]) / 21, atol=0.02)
    # A whole batch is a draw without replacement: every pair once, the likeliest usually first.
    assert sorted(power.select(pool, 3, rng).tolist()) == [0, 1, 2]


def test_power_sampling_puts_zero_scores_last_and_beta_zero_is_uniform():
    from rm.acquisition import BaldStrategy, PowerStrategy

    probs = np.array([[0.5, 0.1, 0.5, 0.2], [0.5, 0.9, 0.5, 0.8]], dtype=np.float32)  # pairs 0, 2: BALD 0
    for seed in range(20):
        ids = PowerStrategy(BaldStrategy()).select(Pool(probs=probs), 4, np.random.default_rng(seed))
        assert set(ids[:2].tolist()) == {1, 3}
    uniform = PowerStrategy(BaldStrategy(), beta=0.0)
    rng = np.random.default_rng(1)
    firsts = np.bincount([uniform.select(Pool(probs=probs), 1, rng)[0] for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(firsts, 0.25, atol=0.03)
    with pytest.raises(ValueError):
        PowerStrategy(BaldStrategy(), beta=-1)


def test_margin_and_thompson_sample_on_the_less_likely_outcome():
    p = np.array([0.9, 0.5, 0.2])
    pool = Pool(probs=np.stack([p, p]))
    for name in ("margin", "thompson"):
        np.testing.assert_allclose(get_strategy(name).positive_scores(pool, np.random.default_rng(0)),
                                   np.minimum(p, 1 - p), atol=1e-6)


# --------------------------------------------------------------------------- the +diverse step


def _ranked_pool(features: np.ndarray) -> Pool:
    """Pairs whose margin rank is their index (pair 0 the closest to even), with the given features."""
    n = len(features)
    probs = (0.5 + 0.04 * np.arange(n))[None, :]
    return Pool(probs=probs, features=features.astype(np.float32))


def test_diverse_counts_a_pair_and_its_swap_as_one_question():
    """Pair features are compared up to sign: the same two responses shown the other way round (features
    negated) are at distance 0 from the pair already picked, so they never fill the batch's second place,
    although they are the second best by score."""
    v = np.eye(8)
    features = np.r_[v[:1], -v[:1], v[2:]]  # pair 1 is pair 0 swapped
    strategy = get_strategy("margin+diverse")
    seconds = [int(strategy.select(_ranked_pool(features), 2, np.random.default_rng(s))[1]) for s in range(200)]
    assert seconds.count(1) == 0
    assert set(seconds) == set(range(2, 8))


def test_diverse_leans_towards_the_better_ranked_of_equally_distant_pairs():
    """Among candidates equally far from the batch, k-means++ draws with probability ∝ the rank weight
    (1 for the best, down to 0.25 for the last): the second-best pair comes up about 3.6 times as often
    as the last one, never the other way round."""
    strategy = get_strategy("margin+diverse")
    pool = _ranked_pool(np.eye(8))  # all orthogonal: every distance the same
    seconds = np.array([strategy.select(pool, 2, np.random.default_rng(s))[1] for s in range(2000)])
    counts = np.bincount(seconds, minlength=8)
    assert counts[0] == 0  # the best is first, once
    assert counts[1] > 2.5 * counts[7], counts
    assert np.all(np.diff(counts[1:]) < 60), counts  # falling with the rank, up to sampling noise
