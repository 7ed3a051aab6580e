"""Acquisition strategies: which open pairs an annotator should judge next.

A strategy is a small object over model outputs. Everything it needs comes in
a ``Pool`` (each ensemble member's P(A ≻ B) for every open pair, optional pair
features and prompt ids, optional features of the pairs already labelled) and
a seeded ``numpy`` generator; nothing is kept between calls. The retraining job
and the simulator (``prefloop simulate``) both order a pool with
``queue_order`` (strategy scores, batch selection on the best candidates, the
rest by score), so what the simulator measures is what the queue serves.

Names accepted by ``get_strategy``:

- ``random``: uniform order.
- ``margin``: ensemble-mean P(A ≻ B) closest to ½ first.
- ``bald``: mutual information between the outcome and the ensemble member,
  ``H(mean p) - mean H(p_m)`` (epistemic uncertainty; ensemble disagreement).
- ``epistemic``: BALD divided by the entropy of the mean prediction: the share
  of a pair's uncertainty that is disagreement between members (pairs each
  member calls fairly clearly, but differently, before coin tosses).
- ``thompson``: one ensemble member drawn per batch; the pairs it is least sure about.
- ``epig``: expected predictive information gain about a sample of the open pool
  under the linear posterior described for ``cover`` (what a label teaches about the pairs the
  model will score, not about its parameters).
- ``cover``: greedy batch information gain of a Bradley–Terry model that is
  linear in the pair features (Laplace posterior over the labelled pairs, updated
  after each pick), so a batch spreads over directions no label has covered yet.
- ``<base>+diverse``: top ``factor × n`` of ``<base>`` then a spread-out subset by
  k-means++ seeding over the pair features.
- ``<base>+cover``: ``<base>``'s score times the share of a pair's information
  that is still new given the labelled pairs and the batch so far.
- ``<base>+power``: a batch sampled with probability ∝ ``score ** 2`` instead of the top
  scores (stochastic power acquisition; ``PowerStrategy``).
  (``+cover`` and ``+power`` need a score: ``random+cover`` and ``random+power`` are refused.)
- ``default``: ``DEFAULT_STRATEGY``.

Every ``select`` applies a per-prompt cap: one pair per prompt per batch while
other prompts remain, the best-scored pair of a prompt first. For k-wise data
(several responses per prompt) this is how the strategy decides which pair of a
prompt's responses to compare.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

DEFAULT_STRATEGY = "bald+diverse"
"""What ``default`` resolves to. Chosen on tuning seeds 100-119 of the HH-RLHF harmless test file
(768-dim features, cold start 64, batches of 32, budget 1000), never on the reporting seeds 0-9.
Area-under-curve gain over random, accuracy points (95% CI): bald+diverse +0.09 (-0.17, +0.36),
bald+mix-with-random +0.04, TypiClust-style typicality +0.02 / 0.00, bald -0.01, bald+cover -0.02,
epig -0.05, largest-difference-first -0.09, cover -0.21, thompson -0.24, margin -0.46 (-0.84,
-0.04), most-confident-first -0.39. On this data no strategy is distinguishable from random
order; plain uncertainty (margin, thompson) is worse than random, as reported for noisy human
labels. bald+diverse was the best and kept its early curve above random.

Later, on tuning seeds 100-119 and 200-219 (40 seeds, cold start 64): bald+diverse +0.08 (-0.15,
+0.28); bald+power (stochastic power acquisition, beta 2) +0.00 (-0.23, +0.23), and with 16
ensemble members instead of 5 once +0.22 (+0.01, +0.42) and, with only its random stream changed
(another strategy name), -0.01 (-0.21, +0.20): on 40 seeds the gain still moves by about 0.2
points between equivalent runs, so none of these differences is real.

Those runs used one random stream per seed. With the simulator replaying each seed 4 times
(``prefloop simulate --repeats``, now the default) bald+diverse is measurably better than random
order over the curve: +0.32 (+0.13, +0.48) on seeds 100-119 and +0.27 (+0.14, +0.42) on 200-219;
the gain is about a point at 128-320 labels and fades by 640 (8% and 37% fewer labels to reach
random's accuracy at 640). BAL-PM's prompt-entropy term (Melo et al. 2024: BALD plus beta times a
nearest-neighbour entropy estimate over the acquired prompts' embeddings, greedy in the batch),
tried with one stream per seed: beta 0.5 / 1 / 2 gave -0.11 / +0.09 / -0.04 (seeds 100-119) and
+0.12 / +0.10 / -0.15 (200-219) against bald+diverse's +0.07 and +0.32 in the same runs; not
adopted. With 4 replays on seeds 100-119: bald +0.32, bald+diverse +0.29, bald+power +0.24, epig
+0.20, thompson+diverse -0.09; the BALD variants are indistinguishable, so the default stays.

With 4 replays through bench/al_candidates.py, AUC gain and labels saved at 640 on seeds 100-119 /
200-219: bald+diverse +0.32, 8% / +0.27, 37%; bald +0.32, 30% / +0.26, 24%; bald+diverse handing
over to random order after 256 labels +0.33, 6% / +0.17, 10%; after 384 +0.29, 11%; half of each
batch random +0.18, 5%; times a typicality (information density) +0.32, 21%; epig with ridge 7
(the trained heads' L2 on unit-scaled features) +0.34, 15% against epig's +0.20, 10%. None is
distinguishable from bald+diverse, which stays. Also tried with 4 replays on seeds 100-119 (on a
machine where bald+diverse gave +0.38, 21%): random+diverse +0.04, 0%; kernel herding on the pair
features, no model +0.25, 8%; bald's top 4n herded +0.37, 20%; expected gradient length +diverse
+0.28, 7%; member variance of the logit +diverse +0.27, 12%; cover with ridge 7 +0.17, -5%.

Four replays still left the verdict to the random streams (see ``annotate.simulate_options.REPEATS``:
on seeds 0-9 four disjoint sets of 4 streams gave +0.42, +0.05, +0.12 and +0.17). With 16 replays:
bald+diverse +0.27 (+0.15, +0.39), 17% at 640 on seeds 100-119 and +0.25 (+0.14, +0.36), 19% on
200-219; bald +0.31, 28% and +0.24, 9%. Still indistinguishable, so the default stays.

Then (2026-11-28, 16 replays, bench/al_candidates.py) BALD divided by the entropy of the mean
prediction, ``epistemic``: +0.31 (+0.22, +0.41), 36.5% (11.1%, 45.6%) at 640 on seeds 100-119 and
+0.30 (+0.15, +0.45), 31.3% (7.3%, 47.2%) on 200-219, against bald+diverse's +0.27, 16.7% and +0.25,
18.9% in the same runs; epistemic+diverse +0.26, 25.3% and committee vote entropy +diverse -0.03,
0.7% on 100-119. Better on both tuning sets in the labels saved at 640 (the area gain is within
noise); but on the reporting seeds 0-9 (``prefloop simulate ... --strategy random --strategy
epistemic --seeds 10``) it gave +0.18 (+0.01, +0.36), 674 labels, -5.3% (-43%, 25%) at 640: what
bald+diverse gives there (+0.16 to +0.19, 663-684 labels). Not distinguishable, so the default stays."""

_EPS = 1e-7


# --------------------------------------------------------------------------- pool


class PairFeatures:
    """Pair features ``(feat[ia] - feat[ib]) / scale`` computed only for the rows asked for.

    A pool of a million pairs over 768-dim response features would need 3 GB
    as a dense matrix; strategies only ever look at a few thousand candidates.
    Index it like an array (``pf[rows]`` gives float32 ``(len(rows), d)``);
    ``take`` gives a lazy subset; ``np.asarray(pf)`` materialises everything.
    """

    def __init__(self, feat: np.ndarray, ia, ib, scale: np.ndarray | None = None):
        self.feat = feat
        self.ia = np.asarray(ia, dtype=np.int64)
        self.ib = np.asarray(ib, dtype=np.int64)
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float32)
        if len(self.ia) != len(self.ib):
            raise ValueError("ia and ib must have the same length")

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.ia), int(self.feat.shape[1]))

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return len(self.ia)

    def take(self, rows) -> "PairFeatures":
        rows = np.asarray(rows)
        return PairFeatures(self.feat, self.ia[rows], self.ib[rows], self.scale)

    def __getitem__(self, rows) -> np.ndarray:
        return pair_features(self.feat, self.ia[rows], self.ib[rows], self.scale)

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)


def _nrows(x) -> int:
    if isinstance(x, tuple):
        return sum(_nrows(p) for p in x)
    return len(x)


def _dims(x) -> int:
    if isinstance(x, tuple):
        return _dims(x[0]) if x else -1
    return int(x.shape[1])


def _rows(x, rows: np.ndarray) -> np.ndarray:
    """Rows of a features container (array, ``PairFeatures`` or a tuple of them stacked)."""
    if not isinstance(x, tuple):
        return np.asarray(x[rows], dtype=np.float32)
    out, start = [], 0
    rows = np.asarray(rows)
    for part in x:
        n = _nrows(part)
        sel = rows[(rows >= start) & (rows < start + n)] - start
        if len(sel):
            out.append(_rows(part, sel))
        start += n
    return np.concatenate(out) if out else np.zeros((0, _dims(x)), np.float32)


@dataclass(frozen=True)
class Pool:
    """The open pairs a strategy ranks.

    Attributes:
        probs: ``(M, n)`` float32, each ensemble member's P(A ≻ B) for each open pair.
        features: ``(n, d)`` float32 pair features for diversity (see ``pair_features``), a
            dense array or a lazy ``PairFeatures``; optional.
        groups: ``(n,)`` int prompt ids (per-prompt cap; which pair of a prompt to ask); optional.
        labelled: ``(L, d)`` features of pairs already labelled (for coverage): an array,
            ``PairFeatures``, or a tuple of them (stacked); optional.
    """

    probs: np.ndarray
    features: np.ndarray | None = None
    groups: np.ndarray | None = None
    labelled: np.ndarray | None = None

    def __post_init__(self):
        probs = np.asarray(self.probs, dtype=np.float32)
        if probs.ndim == 1:
            probs = probs[None, :]
        if probs.ndim != 2:
            raise ValueError(f"probs must be (members, pairs); got shape {probs.shape}")
        object.__setattr__(self, "probs", probs)
        n = probs.shape[1]
        if self.features is not None:
            f = self.features
            if not isinstance(f, PairFeatures):
                f = np.asarray(f, dtype=np.float32)
            if f.ndim != 2 or len(f) != n:
                raise ValueError(f"features must be (pairs, dim) with {n} rows; got {f.shape}")
            object.__setattr__(self, "features", f)
        if self.groups is not None:
            g = np.asarray(self.groups)
            if g.shape != (n,):
                raise ValueError(f"groups must have one prompt id per pair ({n}); got {g.shape}")
            object.__setattr__(self, "groups", g)
        if self.labelled is not None:
            lab = self.labelled
            if not isinstance(lab, (PairFeatures, tuple)):
                lab = np.asarray(lab, dtype=np.float32)
                if lab.ndim != 2:
                    raise ValueError("labelled must be (L, dim)")
            if self.features is not None and _nrows(lab) and _dims(lab) != self.features.shape[1]:
                raise ValueError("labelled must have the same dim as features")
            object.__setattr__(self, "labelled", lab)

    def __len__(self) -> int:
        return int(self.probs.shape[1])

    @property
    def mean_probs(self) -> np.ndarray:
        """Ensemble-mean P(A ≻ B), ``(n,)``."""
        return self.probs.mean(axis=0)

    def subset(self, rows) -> "Pool":
        """The pool restricted to ``rows`` (index array or mask)."""
        rows = np.asarray(rows)
        f = self.features
        if isinstance(f, PairFeatures):
            f = f.take(rows)
        elif f is not None:
            f = f[rows]
        return replace(self, probs=self.probs[:, rows], features=f,
                       groups=None if self.groups is None else self.groups[rows])

    def labelled_rows(self, max_rows: int, rng: np.random.Generator) -> np.ndarray | None:
        """Up to ``max_rows`` labelled pair features (a random sample when there are more)."""
        if self.labelled is None:
            return None
        n = _nrows(self.labelled)
        rows = np.arange(n) if n <= max_rows else np.sort(rng.choice(n, max_rows, replace=False))
        return _rows(self.labelled, rows)

    def with_labelled(self, extra) -> "Pool":
        """The pool with ``extra`` pair features counted as labelled (pending answers)."""
        if self.features is None or not len(extra):
            return self
        if self.labelled is None:
            return replace(self, labelled=extra)
        parts = self.labelled if isinstance(self.labelled, tuple) else (self.labelled,)
        return replace(self, labelled=parts + (extra,))


def pair_features(feat: np.ndarray, ia, ib, scale: np.ndarray | None = None) -> np.ndarray:
    """Pair features ``(f_a - f_b) / scale`` float32 ``(n, d)``: what a linear BT head sees.

    ``scale`` is the ensemble's per-dimension feature standardisation
    (``Ensemble.scale``), so distances match the model's geometry.
    """
    ia, ib = np.asarray(ia), np.asarray(ib)
    z = np.asarray(feat[ia], dtype=np.float32) - np.asarray(feat[ib], dtype=np.float32)
    if scale is not None:
        z /= np.asarray(scale, dtype=np.float32)[None, :]
    return z


def make_pool(member_rewards: np.ndarray, feat: np.ndarray, ia, ib, *, groups=None,
              labelled: tuple | None = None, scale: np.ndarray | None = None) -> Pool:
    """Build the ``Pool`` for open pairs ``(ia, ib)``: the one way the job and the simulator do it.

    Pair features stay lazy (``PairFeatures``): only the candidates a strategy
    looks at are ever computed.

    Args:
        member_rewards: ``(M, R)`` rewards from ``Ensemble.member_rewards`` over ``feat``
            rows (columns of rows no pair uses may hold anything).
        feat: ``(R, D)`` response features.
        ia, ib: open pairs as row indices.
        groups: ``(n,)`` prompt keys of the open pairs (any hashable; mapped to ints).
        labelled: ``(ia, ib)`` row indices of pairs already labelled, for coverage.
        scale: ``Ensemble.scale`` (feature standardisation).
    """
    from rm.heads import pair_probabilities

    probs = pair_probabilities(member_rewards, ia, ib)
    g = None
    if groups is not None:
        _, g = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    lab = None
    if labelled is not None:
        lab = PairFeatures(feat, labelled[0], labelled[1], scale)
    return Pool(probs=probs, features=PairFeatures(feat, ia, ib, scale), groups=g, labelled=lab)


# --------------------------------------------------------------------------- helpers


def _entropy32(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, np.float32(_EPS), np.float32(1 - _EPS))
    q = 1.0 - p
    out = p * np.log(p)
    out += q * np.log(q)
    return np.negative(out, out=out)


def _entropies(probs: np.ndarray, chunk: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
    """``H(mean_m p_m)`` and ``mean_m H(p_m)`` per pair, float32 ``(n,)`` each, computed in chunks."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim == 1:
        probs = probs[None, :]
    total = np.empty(probs.shape[1], dtype=np.float32)
    expected = np.empty(probs.shape[1], dtype=np.float32)
    for s in range(0, probs.shape[1], chunk):
        p = probs[:, s:s + chunk]
        total[s:s + chunk] = _entropy32(p.mean(axis=0))
        expected[s:s + chunk] = _entropy32(p).mean(axis=0)
    return total, expected


def bald_scores(probs: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """Mutual information ``H(mean_m p_m) - mean_m H(p_m)`` per pair (nats, ≥ 0), float64 ``(n,)``.

    Computed in float32 chunks: 16 members × 1M pairs in about 0.1 s on 2 cores (float64: 1.2 s).
    """
    total, expected = _entropies(probs, chunk)
    return np.maximum(total - expected, 0.0).astype(np.float64)


def _rank(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices by descending score; equal scores in random order."""
    return np.lexsort((rng.random(len(scores)), -np.asarray(scores, dtype=np.float64)))


def capped_order(order: np.ndarray, groups: np.ndarray | None, n: int) -> np.ndarray:
    """The first ``n`` of ``order`` with at most one pair per group per round.

    Round r takes, in ``order``, each group's r-th best pair; so a prompt gets a
    second pair in the batch only when every other prompt is used up.
    """
    order = np.asarray(order)
    n = min(n, len(order))
    if groups is None or n == 0:
        return order[:n]
    rank_in_group = _round_of(order, groups)  # 0 for the group's best
    # Primary key: round; secondary: position in the original order.
    final = np.lexsort((np.arange(len(order)), rank_in_group))
    return order[final[:n]]


def _round_of(order: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """For each item of a ``capped_order`` result, its round: how many pairs of its group come before it."""
    if groups is None:
        return np.zeros(len(order), dtype=np.int64)
    g = np.asarray(groups)[np.asarray(order)]
    by_group = np.argsort(g, kind="stable")
    sg = g[by_group]
    starts = np.r_[0, np.flatnonzero(sg[1:] != sg[:-1]) + 1] if len(sg) else np.zeros(0, dtype=np.int64)
    within = np.arange(len(sg)) - np.repeat(starts, np.diff(np.r_[starts, len(sg)]))
    rounds = np.empty(len(order), dtype=np.int64)
    rounds[by_group] = within
    return rounds


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def kmeanspp_order(features: np.ndarray, first: int, n: int, rng: np.random.Generator,
                   weights: np.ndarray | None = None) -> np.ndarray:
    """``n`` rows picked by k-means++ seeding, starting at ``first``.

    Each next row is drawn with probability ∝ ``weight × D²`` where D is the
    distance to the nearest row already picked. Pair features are compared up to
    sign (a pair and its swap are the same question), on unit vectors.
    """
    x = _unit_rows(np.asarray(features, dtype=np.float64))
    n = min(n, len(x))
    w = np.ones(len(x)) if weights is None else np.maximum(np.asarray(weights, dtype=np.float64), 0) + 1e-12
    picked = [int(first)]
    # |a - b|² on unit vectors up to sign: 2 - 2|a·b|.
    d2 = np.maximum(2.0 - 2.0 * np.abs(x @ x[first]), 0.0)
    d2[first] = 0.0
    while len(picked) < n:
        p = w * d2
        total = p.sum()
        if total <= 0:
            rest = np.setdiff1d(np.arange(len(x)), picked)
            picked.extend(rest[: n - len(picked)].tolist())
            break
        nxt = int(rng.choice(len(x), p=p / total))
        picked.append(nxt)
        d2 = np.minimum(d2, np.maximum(2.0 - 2.0 * np.abs(x @ x[nxt]), 0.0))
        d2[nxt] = 0.0
    return np.asarray(picked, dtype=np.int64)


# --------------------------------------------------------------------------- strategies


class Strategy:
    """Base class: ``scores`` ranks the pool; ``select`` takes the top ``n`` under the per-prompt cap.

    Subclasses set ``name`` and implement ``scores``. Higher scores are asked first.
    """

    name = "base"
    scores_use_features = False
    """Whether ``scores`` reads ``pool.features`` (``queue_order`` then passes them, chunk by chunk)."""

    def scores(self, pool: Pool, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def positive_scores(self, pool: Pool, rng: np.random.Generator) -> np.ndarray:
        """``scores`` shifted to be ≥ 0 with the same order (for sampling ∝ score; see ``PowerStrategy``)."""
        return self.scores(pool, rng)

    def select(self, pool: Pool, n: int, rng: np.random.Generator) -> np.ndarray:
        """``min(n, len(pool))`` distinct pool indices, in the order to ask them."""
        if len(pool) == 0 or n <= 0:
            return np.zeros(0, dtype=np.int64)
        return capped_order(_rank(self.scores(pool, rng), rng), pool.groups, n).astype(np.int64)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<strategy {self.name}>"


class RandomStrategy(Strategy):
    """Uniformly random order (the baseline, and the cold start)."""

    name = "random"

    def scores(self, pool, rng):
        return rng.random(len(pool))


class MarginStrategy(Strategy):
    """Ensemble-mean P(A ≻ B) closest to ½ first (uncertainty sampling)."""

    name = "margin"

    def scores(self, pool, rng):
        return -np.abs(pool.mean_probs.astype(np.float64) - 0.5)

    def positive_scores(self, pool, rng):
        return self.scores(pool, rng) + 0.5  # min(p, 1 - p): the less likely outcome's probability


class BaldStrategy(Strategy):
    """Largest mutual information between outcome and ensemble member first (disagreement)."""

    name = "bald"

    def scores(self, pool, rng):
        return bald_scores(pool.probs)


class EpistemicStrategy(Strategy):
    """BALD's share of the total uncertainty, ``I(y; m) / H(mean p)``, largest first.

    BALD is largest where the members disagree, but also grows with the total
    entropy: it favours pairs that every member finds close to a coin toss, whose
    labels (noisy human ones) teach least (``bench/al_hindsight.py``: training on
    the smallest-gap pairs gives a model worse than chance). Divided by the
    entropy of the mean, the score is the share of the uncertainty that is
    disagreement between members: pairs the members would each call fairly
    clearly, but differently, come first.
    """

    name = "epistemic"

    def scores(self, pool, rng):
        total, expected = _entropies(pool.probs)
        bald = np.maximum(total - expected, 0.0).astype(np.float64)
        return bald / np.maximum(total.astype(np.float64), 1e-9)


class ThompsonStrategy(Strategy):
    """Draw one ensemble member per batch and ask what it is least sure about.

    Different batches draw different members, so a batch follows one plausible
    model rather than the average of all of them.
    """

    name = "thompson"

    def scores(self, pool, rng):
        m = int(rng.integers(pool.probs.shape[0])) if len(pool) else 0
        return -np.abs(pool.probs[m].astype(np.float64) - 0.5) if len(pool) else np.zeros(0)

    def positive_scores(self, pool, rng):
        return self.scores(pool, rng) + 0.5


class DiverseStrategy(Strategy):
    """Turn any ranking into a spread-out batch.

    Takes the ``factor × n`` best pairs of ``base`` (per-prompt cap applied),
    starts with the best one and adds pairs by k-means++ seeding over the pair
    features, weighted by their base rank, so the batch covers the candidates
    instead of repeating near-duplicates. Without features it is ``base``.
    """

    def __init__(self, base: Strategy, factor: int = 4):
        self.base = base
        self.factor = factor
        self.name = f"{base.name}+diverse"

    def scores(self, pool, rng):
        return self.base.scores(pool, rng)

    def select(self, pool, n, rng):
        if len(pool) == 0 or n <= 0:
            return np.zeros(0, dtype=np.int64)
        cand = capped_order(_rank(self.scores(pool, rng), rng), pool.groups, self.factor * n)
        if pool.features is None or len(cand) <= n:
            return cand[:n].astype(np.int64)
        # The per-prompt cap holds in the batch too: the candidates come in rounds (each prompt's best pair,
        # then each one's second best, ...); whole rounds are taken while they fit, and the spread picks the
        # rest within the round that fills the batch. With at least n prompts that is round 0 alone.
        rounds = _round_of(cand, pool.groups)
        last = int(rounds[n - 1])
        taken, round_ = cand[rounds < last], cand[rounds == last]
        need = n - len(taken)
        if len(round_) <= need:
            return np.r_[taken, round_].astype(np.int64)
        # Linear rank weights: the spread never pulls in the worst candidates often.
        weights = np.linspace(1.0, 0.25, len(round_))
        picked = kmeanspp_order(pool.features[round_], 0, need, rng, weights)
        return np.r_[taken, round_[picked]].astype(np.int64)


class PowerStrategy(Strategy):
    """Stochastic batch acquisition: sample a batch with probability ∝ ``score ** beta``.

    Power acquisition (Kirsch et al. 2023, "Stochastic batch acquisition"): a
    Gumbel top-k draw on ``beta · log score`` samples ``n`` pairs without
    replacement, each next pick with probability proportional to ``score ** beta``
    among those left. The paper's argument: the n highest estimates of a noisy
    score crowd onto pairs that score high by chance, while a draw leans towards
    uncertain pairs and still spreads over the pool. ``beta`` = 0 is random
    order; a large ``beta`` approaches top-n. Needs a base whose
    ``positive_scores`` are ≥ 0. (On HH-harmless it was no better than random:
    see ``DEFAULT_STRATEGY``.)
    """

    def __init__(self, base: Strategy, beta: float = 2.0):
        if beta < 0:
            raise ValueError("beta must be >= 0")
        self.base = base
        self.beta = float(beta)
        self.name = f"{base.name}+power"

    def scores(self, pool, rng):
        return self.base.scores(pool, rng)

    def select(self, pool, n, rng):
        if len(pool) == 0 or n <= 0:
            return np.zeros(0, dtype=np.int64)
        s = np.asarray(self.base.positive_scores(pool, rng), dtype=np.float64)
        positive = s > 0
        key = np.zeros(len(s))
        if self.beta > 0:
            key[positive] = self.beta * np.log(s[positive])
            # Score 0 means probability 0: such pairs come after every other, in random order.
            key[~positive] = (key[positive].min() if positive.any() else 0.0) - 1e3
        key += rng.gumbel(size=len(s))
        return capped_order(np.argsort(-key, kind="stable"), pool.groups, n).astype(np.int64)


class CoverStrategy(Strategy):
    """Greedy batch information gain under a linear Bradley–Terry posterior.

    The precision of a pair-linear BT model after labels z_1..z_L is
    ``Λ = λ·I + Σ w_j z_j z_jᵀ``; asking pair i is worth ``log(1 + w_i z_iᵀ Λ⁻¹ z_i)``
    with ``w_i = p̄_i (1 - p̄_i)``. After each pick Λ is updated (Sherman–Morrison),
    so the next pick favours directions neither the labels nor the batch cover.

    With a ``base`` strategy the gain is multiplicative: ``base score × novelty``
    where novelty = ``z_iᵀ Λ⁻¹ z_i / z_iᵀ Λ_0⁻¹ z_i`` is the share of pair i's
    information still new after the labelled pairs and the batch so far
    (Λ_0 = λ·I). Candidates are the ``factor × n`` best by ``base`` (capped at
    ``max_candidates``). Features are scaled to unit mean square norm and, above
    ``max_dim`` dimensions, randomly projected (a fixed seeded projection, which
    keeps inner products); at most ``max_labelled`` labelled pairs are used (a
    random sample, weighted up to stand for all of them).
    """

    def __init__(self, base: Strategy | None = None, factor: int = 8, ridge: float = 0.1,
                 max_dim: int = 256, max_candidates: int = 4096, max_labelled: int = 4096,
                 labelled_weight: float = 0.25):
        self.base = base
        self.factor = factor
        self.ridge = ridge
        self.max_dim = max_dim
        self.max_candidates = max_candidates
        self.max_labelled = max_labelled
        self.labelled_weight = labelled_weight
        self.name = "cover" if base is None else f"{base.name}+cover"
        self.scores_use_features = base is None

    def scores(self, pool, rng):
        if self.base is not None:
            return self.base.scores(pool, rng)
        p = pool.mean_probs.astype(np.float64)
        if pool.features is None:
            return p * (1 - p)
        sq = np.empty(len(pool))
        for s in range(0, len(pool), 65536):
            z = pool.features[np.arange(s, min(s + 65536, len(pool)))]
            sq[s:s + len(z)] = np.einsum("nd,nd->n", z, z)
        return p * (1 - p) * sq

    def select(self, pool, n, rng):
        if len(pool) == 0 or n <= 0:
            return np.zeros(0, dtype=np.int64)
        base = self.scores(pool, rng)
        k = min(len(pool), self.max_candidates, max(self.factor * n, n))
        cand = capped_order(_rank(base, rng), pool.groups, k)
        if pool.features is None or len(cand) <= n:
            return cand[:n].astype(np.int64)
        z = _project(np.asarray(pool.features[cand], dtype=np.float64), self.max_dim)
        unit = _unit_scale(z)
        z *= unit
        cov = _posterior_cov(pool, rng, unit, z.shape[1], ridge=self.ridge, max_dim=self.max_dim,
                             max_labelled=self.max_labelled, labelled_weight=self.labelled_weight)
        q0 = np.einsum("nd,nd->n", z, z) / self.ridge
        q = _quad(z, cov)
        p = pool.mean_probs[cand].astype(np.float64)
        w = np.clip(p * (1 - p), 0.01, 0.25)
        s = base[cand]
        if self.base is not None and (s.min() < 0 or s.max() <= 0):
            # Scores that are not > 0 (margin, thompson) map to [0.1, 1] so the product keeps their order.
            spread = float(np.ptp(s))
            s = 0.1 + 0.9 * (s - s.min()) / spread if spread > 0 else np.ones_like(s)
        def gain():
            return np.log1p(w * q) if self.base is None else s * q / np.maximum(q0, 1e-12)

        def update(i):
            nonlocal q
            u = cov @ z[i]
            denom = 1.0 / w[i] + z[i] @ u
            cov[...] -= np.outer(u, u) / denom
            q = q - (z @ u) ** 2 / denom

        groups = None if pool.groups is None else pool.groups[cand]
        return cand[_greedy_capped(gain, update, groups, len(cand), n)].astype(np.int64)


class EpigStrategy(Strategy):
    """Expected predictive information gain (EPIG) under a linear Bradley–Terry posterior.

    BALD values a label by what it says about the *parameters*, which favours
    odd pairs nobody will be scored on. EPIG (Bickford Smith et al., 2023) values
    it by what it says about *predictions on the pairs we care about*: here a
    random sample of the open pool (``max_targets``), which stands for the
    pairs the model will score. With the Laplace posterior ``N(μ, Σ)`` of a model
    linear in pair features (``Σ⁻¹ = λ·I + Σ_labelled w z zᵀ``) and a Gaussian
    approximation of each logit (noise variance ``1/w``, ``w = p̄(1-p̄)``)::

        EPIG(i) ≈ ½ · mean_t ρ²(i, t),   ρ²(i, t) = (z_iᵀ Σ z_t)² / ((z_iᵀΣz_i + 1/w_i)(z_tᵀΣz_t + 1/w_t))

    (the small-correlation form of ``-½ log(1 - ρ²)``). The batch is built
    greedily: after each pick Σ is updated as if its answer were known
    (Sherman–Morrison), so the next pick is informative about what the batch
    has not yet taught. Features are scaled and projected like ``cover``'s.
    ``scores`` (used for the queue beyond the selected batches) is the
    single-pick EPIG of every pool pair.
    """

    name = "epig"
    scores_use_features = True

    def __init__(self, ridge: float = 0.1, max_dim: int = 128, max_candidates: int = 2048,
                 max_targets: int = 1024, max_labelled: int = 4096, labelled_weight: float = 0.25):
        self.ridge = ridge
        self.max_dim = max_dim
        self.max_candidates = max_candidates
        self.max_targets = max_targets
        self.max_labelled = max_labelled
        self.labelled_weight = labelled_weight

    def _targets(self, pool, rng):
        if len(pool) <= self.max_targets:
            return np.arange(len(pool))
        return np.sort(rng.choice(len(pool), self.max_targets, replace=False))

    def _setup(self, pool, rng, cand, tgt):
        zc = _project(np.asarray(pool.features[cand], dtype=np.float64), self.max_dim)
        zt = _project(np.asarray(pool.features[tgt], dtype=np.float64), self.max_dim)
        unit = _unit_scale(zt)
        zc *= unit
        zt *= unit
        cov = _posterior_cov(pool, rng, unit, zc.shape[1], ridge=self.ridge, max_dim=self.max_dim,
                             max_labelled=self.max_labelled, labelled_weight=self.labelled_weight)
        p = pool.mean_probs.astype(np.float64)
        wc = np.clip(p[cand] * (1 - p[cand]), 0.01, 0.25)
        wt = np.clip(p[tgt] * (1 - p[tgt]), 0.01, 0.25)
        return zc, zt, wc, wt, cov

    @staticmethod
    def _gain(zc, zt, wc, wt, cov):
        vt = _quad(zt, cov) + 1.0 / wt
        g = (zt / vt[:, None]).T @ zt / len(zt)
        return 0.5 * _quad(zc, cov @ g @ cov) / (_quad(zc, cov) + 1.0 / wc)

    def scores(self, pool, rng):
        if pool.features is None or len(pool) == 0:
            p = pool.mean_probs.astype(np.float64)
            return p * (1 - p)
        out = np.empty(len(pool))
        tgt = self._targets(pool, rng)
        lab_seed = int(rng.integers(1 << 62))
        for s in range(0, len(pool), 65536):
            rows = np.arange(s, min(s + 65536, len(pool)))
            zc, zt, wc, wt, cov = self._setup(pool, np.random.default_rng(lab_seed), rows, tgt)
            out[rows] = self._gain(zc, zt, wc, wt, cov)
        return out

    def select(self, pool, n, rng):
        if len(pool) == 0 or n <= 0:
            return np.zeros(0, dtype=np.int64)
        if pool.features is None:
            return MarginStrategy().select(pool, n, rng)
        k = min(len(pool), self.max_candidates)
        cand = np.arange(len(pool)) if k == len(pool) else np.sort(rng.choice(len(pool), k, replace=False))
        if len(cand) <= n:
            return capped_order(cand[rng.permutation(len(cand))], pool.groups, n).astype(np.int64)
        zc, zt, wc, wt, cov = self._setup(pool, rng, cand, self._targets(pool, rng))
        def update(i):
            u = cov @ zc[i]
            cov[...] -= np.outer(u, u) / (1.0 / wc[i] + zc[i] @ u)

        groups = None if pool.groups is None else pool.groups[cand]
        picked = _greedy_capped(lambda: self._gain(zc, zt, wc, wt, cov), update, groups, len(cand), n)
        return cand[picked].astype(np.int64)


def _unit_scale(z: np.ndarray) -> float:
    """Factor that gives the rows of ``z`` unit mean square norm."""
    return 1.0 / np.sqrt(max(float(np.mean(np.einsum("nd,nd->n", z, z))), 1e-12))


def _posterior_cov(pool: Pool, rng: np.random.Generator, unit: float, d: int, *, ridge: float, max_dim: int,
                   max_labelled: int, labelled_weight: float) -> np.ndarray:
    """``Σ = (λ·I + weight · Σ_labelled z zᵀ)⁻¹`` over projected, ``unit``-scaled labelled pair features.

    At most ``max_labelled`` labelled pairs are used (a random sample, weighted up
    to stand for all of them).
    """
    prec = ridge * np.eye(d)
    lab = pool.labelled_rows(max_labelled, rng)
    if lab is not None and len(lab):
        lab = _project(np.asarray(lab, dtype=np.float64), max_dim) * unit
        prec += labelled_weight * _nrows(pool.labelled) / len(lab) * lab.T @ lab
    return np.linalg.inv(prec)


def _greedy_capped(gain, update, groups: np.ndarray | None, n_candidates: int, n: int) -> np.ndarray:
    """Greedy batch under the per-prompt cap: ``min(n, n_candidates)`` candidate indices in pick order.

    ``gain()`` scores every candidate given the picks so far; ``update(i)``
    conditions the model on pick ``i`` (as if its answer were known). A prompt
    gets a second pair only once every prompt left has one in the batch.
    """
    picked: list[int] = []
    free = np.ones(n_candidates, dtype=bool)
    open_group = np.ones(n_candidates, dtype=bool)
    for _ in range(min(n, n_candidates)):
        g = gain()
        allowed = free & open_group
        if not allowed.any():
            open_group[:] = True  # every prompt has a pair in the batch: next round of the cap
            allowed = free
        i = int(np.argmax(np.where(allowed, g, -np.inf)))
        picked.append(i)
        free[i] = False
        if groups is not None:
            open_group &= groups != groups[i]
        update(i)
    return np.asarray(picked, dtype=np.int64)


def _quad(z: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``z_iᵀ m z_i`` for every row (BLAS; einsum's three-operand path is far slower)."""
    return np.einsum("nd,nd->n", z @ m, z)


@lru_cache(maxsize=4)
def _projection(d: int, max_dim: int) -> np.ndarray:
    proj = np.random.default_rng(d).standard_normal((d, max_dim)) / np.sqrt(max_dim)
    proj.setflags(write=False)
    return proj


def _project(x: np.ndarray, max_dim: int) -> np.ndarray:
    """``x`` in at most ``max_dim`` dimensions by a fixed Gaussian projection (inner products kept on average)."""
    d = x.shape[1]
    if d <= max_dim:
        return x
    return x @ _projection(d, max_dim)


_BASES = {"random": RandomStrategy, "margin": MarginStrategy, "bald": BaldStrategy,
          "epistemic": EpistemicStrategy, "thompson": ThompsonStrategy}


def strategy_names() -> list[str]:
    """Every name ``get_strategy`` accepts (bases, wrappers and ``default``).

    No ``random+cover`` or ``random+power``: random scores are noise, with
    nothing in them for those wrappers to weight or sharpen.
    """
    names = list(_BASES) + ["cover", "epig"]
    names += [f"{b}+diverse" for b in _BASES] + [f"{b}+cover" for b in _BASES if b != "random"]
    names += [f"{b}+power" for b in _BASES if b != "random"]
    return names + ["default"]


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name`` (see the module docs); ``default`` is ``DEFAULT_STRATEGY``.

    Raises ``ValueError`` naming the valid names for any name not in ``strategy_names()``.
    """
    key = (name or "default").strip().lower()
    if key == "default":
        key = DEFAULT_STRATEGY
    names = strategy_names()
    if key not in names:
        raise ValueError(f"unknown acquisition strategy {name!r}; choose one of {', '.join(names)}")
    base, _, wrapper = key.partition("+")
    if base == "cover" and not wrapper:
        return CoverStrategy()
    if base == "epig" and not wrapper:
        return EpigStrategy()
    strategy = _BASES[base]()
    if wrapper == "diverse":
        return DiverseStrategy(strategy)
    if wrapper == "cover":
        return CoverStrategy(strategy)
    if wrapper == "power":
        return PowerStrategy(strategy)
    return strategy


def select_strategy(name: str, n_labels: int, cold_start: int) -> Strategy:
    """``random`` while fewer than ``cold_start`` labels exist, else ``get_strategy(name)``."""
    return RandomStrategy() if n_labels < cold_start else get_strategy(name)


def queue_order(strategy: Strategy, pool: Pool, batch_size: int, rng: np.random.Generator, *,
                n_batches: int = 8, max_candidates: int = 2048,
                score_chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Priorities for a whole open pool: ``(priority, score)``, both float64 ``(n,)``.

    The one function the retraining job (every open pair, ``n_batches`` batches)
    and the simulator (its next batch) order a pool with:

    1. ``strategy.scores`` every pair; a strategy whose scores read pair features
       gets them ``score_chunk`` pairs at a time, the others get none, so a
       million-pair pool never becomes a dense feature matrix;
    2. the best ``max(max_candidates, 8 × batch_size × n_batches)`` pairs by score
       are the candidates: ``priorities`` builds ``n_batches`` batches from them;
    3. every other pair follows in score order.
    """
    n = len(pool)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    if strategy.scores_use_features and pool.features is not None:
        score = np.concatenate([
            np.asarray(strategy.scores(pool.subset(np.arange(s, min(n, s + score_chunk))), rng), dtype=np.float64)
            for s in range(0, n, score_chunk)])
    else:
        score = np.asarray(strategy.scores(replace(pool, features=None, labelled=None), rng), dtype=np.float64)
    ranked = _rank(score, rng)
    top = ranked[:min(n, max(max_candidates, 8 * batch_size * max(n_batches, 1)))]
    sub_priority, _ = priorities(strategy, pool.subset(top), batch_size, rng, n_batches=n_batches)
    return priority_of(np.concatenate([top[np.argsort(-sub_priority, kind="stable")], ranked[len(top):]])), score


def priority_of(order: np.ndarray) -> np.ndarray:
    """Priorities in (0, 1], distinct, that serve ``order`` (a permutation of the pool) first to last."""
    n = len(order)
    priority = np.empty(n, dtype=np.float64)
    priority[order] = 1.0 - np.arange(n) / n
    return priority


def priorities(strategy: Strategy, pool: Pool, batch_size: int, rng: np.random.Generator,
               n_batches: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Queue order for the whole pool: ``(priority, score)``, both float64 ``(n,)``.

    The first ``n_batches × batch_size`` pairs come from repeated ``select``
    calls (each batch counts the earlier ones as labelled, so they do not repeat
    each other); the rest follow by descending score. ``priority`` is in (0, 1],
    higher served first, distinct for every pair; ``score`` is the strategy's raw
    score (for provenance).
    """
    n = len(pool)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    score = np.asarray(strategy.scores(pool, rng), dtype=np.float64)
    order: list[np.ndarray] = []
    remaining = np.arange(n)
    current = pool
    for _ in range(max(0, n_batches)):
        if not len(remaining):
            break
        sub = current.subset(remaining)
        pick = strategy.select(sub, batch_size, rng)
        chosen = remaining[pick]
        order.append(chosen)
        if current.features is not None:
            current = current.with_labelled(current.features[chosen])
        remaining = np.setdiff1d(remaining, chosen, assume_unique=True)
    if len(remaining):
        order.append(remaining[_rank(score[remaining], rng)])
    return priority_of(np.concatenate(order) if order else np.zeros(0, dtype=np.int64)), score
