"""Try acquisition rules that are not in the app against random order, through the simulator's own loop.

``prefloop simulate`` compares the strategies the app ships. Before a rule is
added there it is tried here, on tuning seeds (100 onwards by default, never
the report's 0-9), with the simulator's ``run_simulation`` and ``compare``
unchanged. Besides every app strategy name, these variants can be named:

- ``S>T@N``: strategy ``S`` until ``N`` labels, ``T`` after (``S>random@N``:
  does an early lead survive when the later labels are an unbiased sample?);
- ``S~F``: each batch takes a share ``F`` from ``S`` and the rest at random;
- ``epig@R`` / ``cover@R``: those strategies with the prior precision ``R``
  (``ridge``) of their linear posterior, on unit-scaled pair features, in
  place of the app's 0.1;
- ``S+denseB``: ``S``'s score times a typicality ``t**B``, with
  ``t = zᵀ C z / |z|²`` for a pair's features ``z`` and ``C`` the second moment
  of the unit-normalised pool features (information density, Settles & Craven
  2008: prefer pairs like many others over outliers);
- ``herd``: no model at all: greedy kernel herding with the sign-invariant
  kernel ``(z·z')²`` on unit pair features, so the labelled set's second
  moment tracks the pool's (a representative design; with heads this
  prior-dominated the model is close to the centroid ``Σ y z``, whose error
  from *which* pairs are labelled is a sampling error a representative design
  shrinks); ``S+herd`` takes ``S``'s top ``4 × n`` (like ``+diverse``) and herds
  among them;
- ``egl``: expected gradient length of the linear heads' loss,
  ``p̄(1-p̄)·|z|`` (Settles et al. 2008); ``gapvar``: the members' variance of
  the logit ``log(p/(1-p))`` (disagreement without BALD's saturation);
- ``distinct``: no model: the pairs whose two responses differ most (``|z|`` in
  the heads' standardised geometry) first, a model-free stand-in for a clear
  preference (``bench/al_hindsight.py``: the pairs with the largest *true*
  reward gap teach fastest); ``S*distinct`` multiplies ``S``'s score by ``|z|``;
- ``S+strataK``: the open pool cut into ``K`` equal-count strata by the
  ensemble mean's confidence ``|p̄ - ½|`` (``S+zstrataK``: by ``|z|``), each
  batch taking the strata's best pairs under ``S`` in turn, so it spans the
  pool like a random batch (does uncertainty sampling flatten late because
  its labelled set holds no clear pairs?). The stratified batch takes ``S``'s
  scores only: ``default+strataK`` ranks by BALD without ``+diverse``'s step;
- ``eer``: expected error reduction (Roy & McCallum 2001): the drop in the
  open pool's expected error ``min(p, 1 - p)`` that each pair's answer would
  bring under a one-step Laplace update of a linear posterior (``epig``'s
  features and covariance, prior precision 7).

One line per variant is printed after the simulator's report: area-under-curve
gain and labels saved at 640 (95% bootstrap CI over seeds), the saving along
the curve, and the largest shortfall.

    .venv/bin/python bench/al_candidates.py default bald 'default>random@256' 'default~0.5' \\
        [--data FILE] [--first-seed 100] [--seeds 20] [--repeats 4] [--cold-start 64] [--members M] [--l2 L]
        [--hidden H] [--parts response]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rm.acquisition as acq  # noqa: E402
from annotate import simulate as sim  # noqa: E402

from _data import hh_data  # noqa: E402

DEFAULT_DATA = hh_data()
_app_strategy = acq.get_strategy


class Density(acq.Strategy):
    """``base`` score times typicality ** ``beta`` (see the module docs)."""

    def __init__(self, base: acq.Strategy, beta: float = 1.0, sample: int = 2048):
        self.base, self.beta, self.sample = base, beta, sample
        self.name = f"{base.name}+dense{beta:g}"

    def scores(self, pool, rng):
        s = self.base.scores(pool, rng)
        if pool.features is None or len(pool) == 0:
            return s
        z = np.asarray(pool.features[np.arange(len(pool))], dtype=np.float64)
        z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
        sub = z[rng.choice(len(z), min(len(z), self.sample), replace=False)]
        typical = np.einsum("nd,nd->n", z @ (sub.T @ sub / len(sub)), z)
        return s * typical ** self.beta


class Herd(acq.Strategy):
    """Kernel herding on pair features with ``k(z, z') = (z·z')²`` (see the module docs)."""

    def __init__(self, base: acq.Strategy | None = None, factor: int = 4, sample: int = 2048):
        self.base, self.factor, self.sample = base, factor, sample
        self.name = "herd" if base is None else f"{base.name}+herd"

    def scores(self, pool, rng):
        return rng.random(len(pool)) if self.base is None else self.base.scores(pool, rng)

    def select(self, pool, n, rng):
        if len(pool) == 0 or n <= 0:
            return np.zeros(0, dtype=np.int64)
        if pool.features is None:
            return super().select(pool, n, rng)
        every = np.arange(len(pool))
        cand = every if self.base is None else acq.capped_order(
            acq._rank(self.scores(pool, rng), rng), pool.groups, self.factor * n)
        if len(cand) <= n:
            return cand[:n].astype(np.int64)
        unit = lambda x: x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)  # noqa: E731
        z_all = unit(np.asarray(pool.features[every], dtype=np.float64))
        tgt = z_all[rng.choice(len(z_all), min(len(z_all), self.sample), replace=False)]
        z = z_all[cand]
        # Herding objective: mean kernel to the pool minus mean kernel to the picks so far.
        target = np.einsum("nd,nd->n", z @ (tgt.T @ tgt / len(tgt)), z)
        lab = pool.labelled_rows(4096, rng)
        lab = unit(np.asarray(lab, dtype=np.float64)) if lab is not None and len(lab) else np.zeros((0, z.shape[1]))
        n_lab = acq._nrows(pool.labelled) if pool.labelled is not None else 0
        w_lab = n_lab / max(len(lab), 1)
        pulled = w_lab * ((z @ lab.T) ** 2).sum(axis=1) if len(lab) else np.zeros(len(z))
        t0 = n_lab

        def gain():
            t = t0 + len(picked)
            return target - pulled / (t + 1)

        picked: list[int] = []

        def update(i):
            nonlocal pulled
            picked.append(i)
            pulled = pulled + (z @ z[i]) ** 2

        groups = None if pool.groups is None else pool.groups[cand]
        order = acq._greedy_capped(gain, update, groups, len(cand), n)
        return cand[order].astype(np.int64)


class Egl(acq.Strategy):
    """Expected gradient length ``p̄(1-p̄)·|z|`` of a linear head's loss."""

    name = "egl"
    scores_use_features = True

    def scores(self, pool, rng):
        p = pool.mean_probs.astype(np.float64)
        if pool.features is None:
            return p * (1 - p)
        z = np.asarray(pool.features[np.arange(len(pool))], dtype=np.float64)
        return p * (1 - p) * np.linalg.norm(z, axis=1)


class GapVar(acq.Strategy):
    """Variance over members of the logit ``log(p/(1-p))`` of each pair."""

    name = "gapvar"

    def scores(self, pool, rng):
        p = np.clip(pool.probs.astype(np.float64), 1e-7, 1 - 1e-7)
        return np.log(p / (1 - p)).var(axis=0)


class Distinct(acq.Strategy):
    """Pairs whose responses differ most first: ``|z|`` of the pair features, times ``base``'s score ** 1.

    No model in ``distinct``: the hindsight bench found that training on the
    pairs with the largest *true* reward gap learns fastest (clean labels), and
    a model's own gap confirms its early mistakes; the distance between the two
    responses in the heads' geometry is a model-free stand-in for a clear
    preference. ``S*distinct`` multiplies ``S``'s (non-negative) score by it.
    """

    scores_use_features = True

    def __init__(self, base: acq.Strategy | None = None):
        self.base = base
        self.name = "distinct" if base is None else f"{base.name}*distinct"

    def scores(self, pool, rng):
        if pool.features is None:
            return rng.random(len(pool)) if self.base is None else self.base.scores(pool, rng)
        norm = np.linalg.norm(np.asarray(pool.features[np.arange(len(pool))], dtype=np.float64), axis=1)
        norm = norm + 1e-9 * rng.random(len(pool))  # random tie-break
        return norm if self.base is None else norm * self.base.positive_scores(pool, rng)


class EpiShare(acq.Strategy):
    """BALD's share of the total uncertainty, ``I(y; m) / H(p̄)``: pairs the members disagree on *confidently*
    (epistemic) rather than pairs every member finds a coin toss (aleatoric, where the hindsight bench
    found labels teach nothing)."""

    name = "epishare"

    def scores(self, pool, rng):
        p = pool.probs.astype(np.float64)
        h = -(lambda q: q * np.log(q) + (1 - q) * np.log(1 - q))(np.clip(p.mean(axis=0), 1e-7, 1 - 1e-7))
        return acq.bald_scores(pool.probs) / np.maximum(h, 1e-9)


class VoteEntropy(acq.Strategy):
    """Query by committee: the entropy of the members' votes (which side each member prefers)."""

    name = "vote"

    def scores(self, pool, rng):
        share = (pool.probs > 0.5).mean(axis=0).astype(np.float64)
        q = np.clip(share, 1e-12, 1 - 1e-12)
        return -(q * np.log(q) + (1 - q) * np.log(1 - q)) * (share > 0) * (share < 1)


class Strata(acq.Strategy):
    """``base``'s order within ``k`` equal-count strata of the open pool, the batch drawn evenly from them.

    ``+strataK`` stratifies by the ensemble mean's confidence ``|p̄ - ½|``;
    ``+zstrataK`` by ``|z|`` (no model). Uncertainty sampling leads early and
    then flattens (its labelled set holds no clear pairs, whose clean labels the
    hindsight bench found teach most); a batch that spans the pool's strata
    like a random one, taking the most informative pair of each, keeps both.
    """

    def __init__(self, base: acq.Strategy, k: int, by: str = "conf"):
        self.base, self.k, self.by = base, k, by
        self.name = f"{base.name}+{'z' if by == 'z' else ''}strata{k}"
        self.scores_use_features = by == "z" or base.scores_use_features

    def scores(self, pool, rng):
        return self.base.scores(pool, rng)

    def select(self, pool, n, rng):
        if len(pool) == 0 or n <= 0:
            return np.zeros(0, dtype=np.int64)
        if self.by == "z" and pool.features is not None:
            key = np.linalg.norm(np.asarray(pool.features[np.arange(len(pool))], dtype=np.float64), axis=1)
        else:
            key = np.abs(pool.mean_probs.astype(np.float64) - 0.5)
        k = max(1, min(self.k, len(pool)))
        stratum = np.empty(len(pool), dtype=np.int64)
        stratum[np.lexsort((rng.random(len(pool)), key))] = np.arange(len(pool)) * k // len(pool)
        order = acq._rank(self.base.scores(pool, rng), rng)
        # Each stratum's best, then each one's second best, ...; strata in a random order within a round.
        within = acq._round_of(order, stratum[order])
        shuffle = rng.permutation(k)
        order = order[np.lexsort((shuffle[stratum[order]], within))]
        return acq.capped_order(order, pool.groups, n).astype(np.int64)


class Eer(acq.Strategy):
    """Expected error reduction (Roy & McCallum 2001) under a linear Bradley–Terry posterior.

    For each open pair ``c`` and each answer, the logits of a sample of the
    open pool move by the one-step Laplace update ``z_tᵀ Σ z_c · g`` with
    ``g = (y - p_c) / (1 + p_c(1 - p_c) z_cᵀ Σ z_c)``; the score is the drop in
    the pool's expected error ``mean_t min(p_t, 1 - p_t)``, averaged over the
    answer under the ensemble mean ``p_c``. Features are projected and scaled
    by ``epig``'s code, with the prior precision ``ridge`` (7 matches the heads' L2).
    """

    name = "eer"
    scores_use_features = True

    def __init__(self, ridge: float = 7.0):
        self.epig = acq.EpigStrategy(ridge=ridge)  # its target sample, projection and posterior

    def scores(self, pool, rng):
        p = pool.mean_probs.astype(np.float64)
        if pool.features is None or len(pool) == 0:
            return p * (1 - p)
        every, tgt, e = np.arange(len(pool)), self.epig._targets(pool, rng), self.epig
        z = acq._project(np.asarray(pool.features[every], dtype=np.float64), e.max_dim)
        unit = acq._unit_scale(z[tgt])
        z *= unit
        cov = acq._posterior_cov(pool, rng, unit, z.shape[1], ridge=e.ridge, max_dim=e.max_dim,
                                 max_labelled=e.max_labelled, labelled_weight=e.labelled_weight)
        pc = np.clip(p, 1e-6, 1 - 1e-6)
        logit_t = np.log(pc[tgt] / (1 - pc[tgt]))
        err_now = np.minimum(pc[tgt], 1 - pc[tgt]).mean()
        s = acq._quad(z, cov)
        out = np.empty(len(pool))
        for lo in range(0, len(pool), 512):
            c = every[lo:lo + 512]
            k = z[tgt] @ (cov @ z[c].T)  # (targets, candidates)
            denom = 1 + pc[c] * (1 - pc[c]) * s[c]
            after = 0.0
            for y, weight in ((1.0, pc[c]), (0.0, 1 - pc[c])):
                q = 1 / (1 + np.exp(-(logit_t[:, None] + k * ((y - pc[c]) / denom)[None, :])))
                after = after + weight * np.minimum(q, 1 - q).mean(axis=0)
            out[c] = err_now - after
        return out + 1e-12 * rng.random(len(pool))  # random tie-break


_EXTRA = {"herd": lambda: Herd(), "egl": Egl, "gapvar": GapVar, "distinct": lambda: Distinct(),
          "epishare": EpiShare, "vote": VoteEntropy, "eer": Eer}


class Mix(acq.Strategy):
    """A share ``frac`` of each batch from ``base``, the rest uniformly from the other open pairs."""

    def __init__(self, base: acq.Strategy, frac: float):
        self.base, self.frac = base, frac
        self.name = f"{base.name}~{frac:g}"

    def scores(self, pool, rng):
        return self.base.scores(pool, rng)

    def select(self, pool, n, rng):
        if len(pool) == 0 or n <= 0:
            return np.zeros(0, dtype=np.int64)
        k = int(round(self.frac * min(n, len(pool))))
        first = self.base.select(pool, k, rng) if k else np.zeros(0, dtype=np.int64)
        rest = rng.permutation(np.setdiff1d(np.arange(len(pool)), first))[: n - len(first)]
        return np.concatenate([first, rest]).astype(np.int64)


def get_strategy(name: str) -> acq.Strategy:
    if name in _EXTRA:
        return _EXTRA[name]()
    if name.endswith("*distinct"):
        return Distinct(get_strategy(name[: -len("*distinct")]))
    if name.endswith("+herd"):
        return Herd(get_strategy(name[: -len("+herd")]))
    if name.endswith("+diverse") and (name[: -len("+diverse")] in _EXTRA or "*distinct" in name):
        diverse = acq.DiverseStrategy(get_strategy(name[: -len("+diverse")]))
        diverse.scores_use_features = diverse.base.scores_use_features
        return diverse
    if "strata" in name:
        base, k = name.rsplit("strata", 1)
        by = "z" if base.endswith("+z") else "conf"
        return Strata(get_strategy(base[: -2] if by == "z" else base[: -1]), int(k), by)
    if name.startswith(("epig@", "cover@")):
        base, ridge = name.split("@")
        return (acq.EpigStrategy if base == "epig" else acq.CoverStrategy)(ridge=float(ridge))
    if ">" in name and "@" in name:
        return get_strategy(name.split(">")[0])
    if "+dense" in name:
        base, beta = name.rsplit("+dense", 1)
        return Density(get_strategy(base), float(beta))
    if "~" in name:
        base, frac = name.rsplit("~", 1)
        return Mix(get_strategy(base), float(frac))
    return _app_strategy(name)


def select_strategy(name: str, n_labels: int, cold_start: int) -> acq.Strategy:
    if n_labels < cold_start:
        return acq.RandomStrategy()
    if ">" in name and "@" in name:
        base, rest = name.split(">", 1)
        then, at = rest.rsplit("@", 1)
        return get_strategy(then) if n_labels >= int(at) else get_strategy(base)
    return get_strategy(name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("strategy", nargs="+", help="app strategy names or the variants above")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--first-seed", type=int, default=100, help="tuning seeds by default, not the report's 0-9")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--repeats", type=int, default=sim.REPEATS)
    p.add_argument("--cold-start", type=int, default=64, help="the app's default PREFLOOP_COLD_START")
    p.add_argument("--cache-dir", default=str(ROOT / ".prefloop" / "cache"))
    p.add_argument("--members", type=int, default=None,
                   help="ensemble size for every strategy's model, random's too (the app's: rm.train.TrainConfig)")
    p.add_argument("--l2", type=float, default=None,
                   help="the heads' L2 prior for every strategy's model (the app's: rm.train.TrainConfig)")
    p.add_argument("--hidden", type=int, default=None,
                   help="MLP heads of this width for every strategy's model (the app's: linear)")
    p.add_argument("--parts", default=None,
                   help="comma-separated feature parts (rm.features.FeatureSpec; the app's: joint,response)")
    args = p.parse_args()
    for name in args.strategy:
        get_strategy(name)  # unknown names fail before any work
    # The simulator looks both up in rm.acquisition at each step.
    acq.get_strategy, acq.select_strategy = get_strategy, select_strategy

    t0 = time.perf_counter()
    from rm.features import FeatureSpec

    spec = FeatureSpec(parts=tuple(args.parts.split(","))) if args.parts else None
    data = sim.load_dataset(args.data, embedder=sim.make_embedder(args.cache_dir), features=spec).pairs
    names = ["random"] + [s for s in args.strategy if s != "random"]
    from rm.train import TrainConfig

    overrides = {k: v for k, v in (("n_members", args.members), ("l2", args.l2), ("hidden", args.hidden)) if v}
    config = TrainConfig(**overrides) if overrides else None
    curves = sim.run_simulation(data, names, range(args.first_seed, args.first_seed + args.seeds),
                                cold_start=args.cold_start, repeats=args.repeats, config=config)
    comparisons = [sim.compare(c, curves[0]) for c in curves[1:]]
    print(sim.format_report(curves, comparisons))
    print(f"\nseeds {args.first_seed}-{args.first_seed + args.seeds - 1}, {args.repeats} replays, "
          f"cold start {args.cold_start}, {args.members or TrainConfig().n_members} members, "
          f"L2 {args.l2 or 'default'}, {f'MLP {args.hidden}' if args.hidden else 'linear'} heads, "
          f"features {args.parts or 'joint,response'}; "
          f"{time.perf_counter() - t0:.0f} s")
    for c in comparisons:
        along = " / ".join(sim.saving_text(c, s, 0) for _, s in c.savings_along)
        print(f"{c.strategy:26s} AUC {c.auc_gain:+.2f} ({c.auc_gain_ci[0]:+.2f} to {c.auc_gain_ci[1]:+.2f})  "
              f"saved at {c.reference_budget:.0f}: {sim.saving_text(c, c.saving):>6s} "
              f"({sim.saving_text(c, c.saving_ci[0])} to {sim.saving_text(c, c.saving_ci[1])})  along {along}  "
              f"worst {c.worst_gap:+.2f} at {c.worst_gap_at}")


if __name__ == "__main__":
    main()
