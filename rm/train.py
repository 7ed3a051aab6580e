"""Training an ensemble of Bradley–Terry heads on frozen features.

The loss, in three lines (``d = r_A - r_B``, ``m`` = margin from strength)::

    A wins:  -log σ(d - ε - m)
    B wins:  -log σ(-d - ε - m)
    tie:     -log(σ(d + ε) - σ(d - ε))

This is the Rao–Kupper likelihood with threshold ε when the training data holds
ties: P(A) + P(B) + P(tie) = 1 (at m = 0). ε is fitted by maximum likelihood
with the head weights (each member its own, ``fit_tie_epsilon``), or fixed at
``tie_epsilon``. Data without ties is fitted with plain Bradley–Terry, ε = 0
(the maximum-likelihood ε when no tie is observed, and the limit of the fitted ε
as ties vanish), so a tie-free data set trains exactly as it always did.

Pairs judged *both bad* are dropped: they say nothing about which response is
better. The retraining job runs ``train_ensemble`` and ``rm.evaluate.evaluate``
as two timed steps; the active-learning simulator calls ``fit_and_evaluate``,
which is exactly those two calls.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from rm.data import A_WINS, B_WINS, BOTH_BAD, TIE, PairData
from rm.heads import Ensemble


@dataclass
class TrainConfig:
    """Options of the head ensemble. These field docs are the one place they are documented.

    Attributes:
        n_members: Ensemble size. Each member is fitted on its own bootstrap
            resample (seeded from ``(seed, member)``).
        hidden: 0 for linear heads; otherwise the width of one ReLU hidden layer.
        l2: L2 penalty ``l2/2 * ||w||²`` on the weights (not biases) against the
            *summed* pair losses of a member (a Gaussian prior: its weight relative
            to the data shrinks as pairs accumulate). Features are standardised
            first. ``None`` picks 5000 for linear heads and 500 for MLP heads: on
            HH-harmless with ~1.6k training pairs and the default 768 features,
            linear 1.5k / 3k / 5k / 10k gave 0.655 / 0.658 / 0.657 / 0.657 held-out
            accuracy (5 seeds; flat). Measured earlier on 3,072 concatenated-layer
            features: MLP(64) 50 / 500 gave 0.648 / 0.670 (3 seeds) against
            linear's 0.658, not better within noise and 20x slower.
        lr: Adam learning rate (full-batch steps).
        max_steps: Upper bound on full-batch optimiser steps.
        eval_every: Steps between validation checks for early stopping.
        patience: Stop after this many checks without any member improving.
        bootstrap: Resample *groups* (prompts) with replacement per member; each
            member's out-of-bag groups are its validation data (early stopping
            and temperature). If False, a ``val_fraction`` group split is used.
        val_fraction: Validation share when ``bootstrap`` is False.
        strength_margins: Margin ``m`` subtracted from the winner's reward gap,
            indexed by judgment strength: 0/None = unspecified (no margin),
            1 = slightly better, 2 = clearly better, 3 = much better.
        tie_epsilon: Rao–Kupper threshold ε (log ν), used when the training data
            holds ties: P(A ≻ B) = ``σ(d - ε)``, P(B ≻ A) = ``σ(-d - ε)``, P(tie) =
            ``σ(d + ε) - σ(d - ε)``, the mass where the gap is within ±ε. With
            ``fit_tie_epsilon`` it is only the starting value of the fit; without,
            the fixed ε. Must be > 0 when the data holds ties (ε = 0 gives a tie
            probability 0). Data without ties trains plain Bradley–Terry whatever
            ε is. The ε each member trained with is ``Ensemble.info["tie_epsilon"]``
            (a list, one per member; 0 for tie-free data). Win
            probabilities used for evaluation stay ``σ(d)`` on decisive pairs: with
            ties the gap is on the Rao–Kupper scale, where P(A ≻ B | not a tie) is
            about ``σ((1 + tanh(ε/2)) d)`` (exactly its slope at d = 0), and the
            temperature ``calibrate`` fits on decisive out-of-bag pairs absorbs that
            factor; with ``calibrate=False`` σ(d) is under-confident on such models.
        fit_tie_epsilon: Fit ε by maximum likelihood jointly with the weights,
            each member on its own resample (ε = softplus(θ), started at
            ``tie_epsilon``), so the ε an ensemble member uses goes with the gaps
            it fitted on the same data. A fixed ε that does not match the data's
            tie rate biases the gaps (ε fixed at 0.5 on data with true ε 0.1:
            gaps ×1.15-1.26; true ε 1.0: ×0.75-0.80), and a lone tie would switch
            a fixed ε on for all wins; the fitted ε tends to 0 as ties vanish.
        calibrate: Fit a temperature T on out-of-bag / validation pairs so that
            ``σ(d / T)`` minimises their log loss; stored in the ensemble.
        optimizer: ``"lbfgs"`` fits linear heads to convergence (convex, no early
            stopping; ``max_steps`` bounds the iterations); ``"adam"`` runs
            full-batch Adam with early stopping (always used for MLP heads).
        num_threads: ``torch.set_num_threads`` while training.
    """

    n_members: int = 5
    hidden: int = 0
    l2: float | None = None
    lr: float = 0.05
    max_steps: int = 400
    eval_every: int = 5
    patience: int = 8
    bootstrap: bool = True
    val_fraction: float = 0.15
    strength_margins: tuple[float, float, float, float] = (0.0, 0.1, 0.5, 1.0)
    tie_epsilon: float = 0.5
    fit_tie_epsilon: bool = True
    calibrate: bool = True
    optimizer: str = "lbfgs"
    num_threads: int = 2


def preference_loss(d: torch.Tensor, outcome: torch.Tensor, margin: torch.Tensor | float = 0.0,
                    tie_epsilon: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Per-pair Rao–Kupper negative log-likelihood for reward gaps ``d = r_A - r_B``.

    ``outcome`` holds ``A_WINS``/``B_WINS``/``TIE`` codes (``BOTH_BAD`` rows must
    be removed by the caller); ``margin`` broadcasts against ``d``. With
    ``tie_epsilon`` ε the outcomes have probabilities ``σ(d - ε)``, ``σ(-d - ε)``
    and ``σ(d + ε) - σ(d - ε)``, which sum to 1; ε = 0 (the default) is plain
    Bradley–Terry, where a tie has probability 0 (loss +inf). ``tie_epsilon`` may
    be a tensor broadcasting against ``d`` (one ε per member), differentiable.
    """
    outcome = torch.as_tensor(outcome, device=d.device)
    margin = torch.as_tensor(margin, dtype=d.dtype, device=d.device)
    eps = (tie_epsilon.to(d.dtype) if isinstance(tie_epsilon, torch.Tensor)
           else torch.as_tensor(float(tie_epsilon), dtype=d.dtype, device=d.device))
    sign = torch.where(outcome == B_WINS, -1.0, 1.0).to(d.dtype)
    win = -torch.nn.functional.logsigmoid(sign * d - eps - margin)
    is_tie = outcome == TIE
    if not bool(is_tie.any()):
        # Tie-free batches skip the tie term: at ε = 0 its gradient is NaN even where unused.
        return win
    # log(σ(ε - x) - σ(-ε - x)) with x = |d|, written to stay finite for large |d|.
    x = d.abs()
    hi = torch.nn.functional.logsigmoid(eps - x)
    lo = torch.nn.functional.logsigmoid(-eps - x)
    tie = -(hi + torch.log(-torch.expm1(lo - hi)))
    return torch.where(is_tie, tie, win)


def effective_l2(config: TrainConfig) -> float:
    """The L2 strength ``config`` trains with (resolving the ``None`` default)."""
    if config.l2 is not None:
        return float(config.l2)
    return 500.0 if config.hidden else 5000.0


def _margins(strength: np.ndarray, table) -> np.ndarray:
    s = np.clip(np.asarray(strength, dtype=np.int64), 0, len(table) - 1)
    return np.asarray(table, dtype=np.float32)[s]


def _group_ids(data: PairData) -> np.ndarray:
    if data.group is None:
        return np.arange(len(data))
    _, inverse = np.unique(np.asarray(data.group).astype(str), return_inverse=True)
    return inverse


def _member_weights(data: PairData, config: TrainConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap counts ``(M, n)`` and validation masks ``(M, n)`` (by group)."""
    gid = _group_ids(data)
    n_groups = int(gid.max()) + 1 if len(gid) else 0
    m = config.n_members
    weights = np.ones((m, len(data)), dtype=np.float32)
    val = np.zeros((m, len(data)), dtype=bool)
    for k in range(m):
        rng = np.random.default_rng([seed, k])
        if config.bootstrap:
            counts = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
            weights[k] = counts[gid]
            val[k] = counts[gid] == 0
        elif n_groups >= 10 and config.val_fraction > 0:
            held = np.random.default_rng([seed, 0]).random(n_groups) < config.val_fraction
            weights[k] = ~held[gid]
            val[k] = held[gid]
    return weights, val


class _Heads(torch.nn.Module):
    def __init__(self, m: int, d: int, hidden: int, gen: torch.Generator):
        super().__init__()
        self.hidden = hidden
        if hidden:
            self.w1 = torch.nn.Parameter(torch.randn(m, d, hidden, generator=gen) * (2.0 / d) ** 0.5)
            self.b1 = torch.nn.Parameter(torch.zeros(m, hidden))
            self.w = torch.nn.Parameter(torch.randn(m, hidden, generator=gen) * (1.0 / hidden) ** 0.5)
        else:
            self.w = torch.nn.Parameter(torch.zeros(m, d))
        self.b = torch.nn.Parameter(torch.zeros(m))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hidden:
            h = torch.relu(torch.einsum("rd,mdh->mrh", x, self.w1) + self.b1[:, None, :])
            return torch.einsum("mrh,mh->mr", h, self.w) + self.b[:, None]
        return self.w @ x.T + self.b[:, None]

    def penalty(self) -> torch.Tensor:
        p = (self.w ** 2).sum(dim=tuple(range(1, self.w.dim())))
        if self.hidden:
            p = p + (self.w1 ** 2).sum(dim=(1, 2))
        return p


def fit_temperature(d: np.ndarray, a_wins: np.ndarray) -> float:
    """Temperature T minimising the log loss of ``σ(d / T)`` against ``a_wins`` (bool)."""
    from scipy.optimize import minimize_scalar

    d = np.asarray(d, dtype=np.float64)
    y = np.asarray(a_wins, dtype=np.float64)
    if len(d) < 20 or not np.any(np.abs(d) > 0):
        return 1.0

    def nll(log_t):
        z = d / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, -z) * y + np.logaddexp(0.0, z) * (1 - y)))

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(res.x))


def _epsilon(eps, theta):
    """The Rao–Kupper ε to train with: ``softplus(θ)`` (one per member) when fitted, else ``eps``."""
    return torch.nn.functional.softplus(theta) if theta is not None else eps


def _fit_linear_lbfgs(heads, xt, ia_t, ib_t, out_t, marg, w_t, eps, theta, config) -> int:
    """Convex case: L-BFGS on pair differences to convergence (L2 does the regularising).

    With ``theta`` (ε = softplus(θ) fitted) the problem is no longer convex in
    (w, θ) jointly, but it stays smooth; it is convex in w for each ε.
    """
    delta = xt[ia_t] - xt[ib_t]
    l2 = effective_l2(config) / len(ia_t)  # losses below are means
    params = list(heads.parameters()) + ([theta] if theta is not None else [])
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=config.max_steps, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        d = heads.w @ delta.T  # biases cancel in a gap
        losses = (preference_loss(d, out_t, marg, _epsilon(eps, theta)) if eps or theta is not None
                  else -torch.nn.functional.logsigmoid(torch.where(out_t == B_WINS, -d, d) - marg))
        obj = ((losses * w_t).sum(dim=1) + 0.5 * l2 * heads.penalty()).sum()
        obj.backward()
        return obj

    opt.step(closure)
    return int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 0))


def _snapshot(heads, theta) -> dict:
    state = {k: v.detach().clone() for k, v in heads.state_dict().items()}
    return dict(state, **({"theta": theta.detach().clone()} if theta is not None else {}))


def _restore(heads, theta, state: dict) -> None:
    state = dict(state)
    with torch.no_grad():
        if theta is not None:
            theta.copy_(state.pop("theta"))
        heads.load_state_dict(state)


def _all_finite(heads, theta) -> bool:
    tensors = list(heads.parameters()) + ([theta] if theta is not None else [])
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _fit_adam(heads, xt, ia_t, ib_t, out_t, marg, w_t, v_t, eps, theta, config) -> int:
    """Full-batch Adam with per-member early stopping on validation (out-of-bag) pairs."""
    l2 = effective_l2(config) / len(ia_t)  # losses below are means
    v_n = v_t.sum(dim=1)
    has_val = bool((v_n > 0).all())
    opt = torch.optim.Adam(list(heads.parameters()) + ([theta] if theta is not None else []), lr=config.lr)
    best = torch.full((config.n_members,), float("inf"))
    state = dict(heads.state_dict(), **({"theta": theta} if theta is not None else {}))
    best_state = _snapshot(heads, theta)
    stale, step = 0, 0
    for step in range(1, config.max_steps + 1):
        r = heads(xt)
        losses = preference_loss(r[:, ia_t] - r[:, ib_t], out_t, marg, _epsilon(eps, theta))
        objective = (losses * w_t).sum(dim=1) + 0.5 * l2 * heads.penalty()
        opt.zero_grad(set_to_none=True)
        objective.sum().backward()
        opt.step()
        if has_val and step % config.eval_every == 0:
            with torch.no_grad():
                r = heads(xt)
                vl = (preference_loss(r[:, ia_t] - r[:, ib_t], out_t, 0.0, _epsilon(eps, theta))
                      * v_t).sum(dim=1) / v_n
            better = vl < best - 1e-5
            if better.any():
                best = torch.where(better, vl, best)
                for k, v in state.items():
                    best_state[k][better] = v.detach()[better]
                stale = 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
    if has_val:
        _restore(heads, theta, best_state)
    return step


def _distinct_pairs(ia: np.ndarray, ib: np.ndarray) -> int:
    """How many different pairs of responses the rows judge (A/B in either order is one pair)."""
    if not len(ia):
        return 0
    return int(len(np.unique(np.stack([np.minimum(ia, ib), np.maximum(ia, ib)], axis=1), axis=0)))


def train_ensemble(data: PairData, config: TrainConfig | None = None, seed: int = 0) -> Ensemble:
    """Fit ``config.n_members`` Bradley–Terry heads on ``data`` (both-bad pairs dropped).

    Only the feature rows that the pairs reference are read, once each.
    """
    config = config or TrainConfig()
    t0 = time.perf_counter()
    keep = data.outcome != BOTH_BAD
    n_dropped = int((~keep).sum())
    data = data.subset(keep) if n_dropped else data
    if len(data) == 0:
        raise ValueError("no usable pairs to train on (all were both-bad or the data is empty); "
                         "collect A/B/tie judgments first")
    has_ties = bool((data.outcome == TIE).any())
    if has_ties and not config.tie_epsilon > 0:
        raise ValueError(f"TrainConfig.tie_epsilon (the fixed ε, or where its fit starts) must be > 0 "
                         f"when the data holds ties (got {config.tie_epsilon}); with it a tie has probability 0")
    # Rao–Kupper when there are ties; without any, ε = 0 is plain Bradley–Terry.
    eps = float(config.tie_epsilon) if has_ties else 0.0
    theta = None  # ε = softplus(θ), one per member, when fitted
    if has_ties and config.fit_tie_epsilon:
        start = math.log(math.expm1(eps)) if eps < 20 else eps  # softplus⁻¹
        theta = torch.nn.Parameter(torch.full((config.n_members, 1), start))
    used, inverse = np.unique(np.concatenate([data.ia, data.ib]), return_inverse=True)
    ia, ib = inverse[:len(data)], inverse[len(data):]
    x = np.asarray(data.feat[used], dtype=np.float32)
    mean = x.mean(axis=0)
    # A feature constant over the training responses (a prompt part with one prompt,
    # a single response) keeps scale 1: its float32 std is rounding noise (~1e-6), and
    # dividing by it made an MLP head's reward for any response that differs there explode.
    constant = x.max(axis=0) == x.min(axis=0)
    scale = np.where(constant, 1.0, x.std(axis=0) + 1e-6).astype(np.float32)
    x = (x - mean) / scale

    weights, val = _member_weights(data, config, seed)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        gen = torch.Generator().manual_seed(int(seed))
        heads = _Heads(config.n_members, x.shape[1], config.hidden, gen)
        xt = torch.from_numpy(x)
        ia_t, ib_t = torch.from_numpy(ia), torch.from_numpy(ib)
        out_t = torch.from_numpy(data.outcome.astype(np.int64))
        marg = torch.from_numpy(_margins(data.strength, config.strength_margins))
        w_t = torch.from_numpy(weights)
        w_t = w_t / w_t.sum(dim=1, keepdim=True).clamp(min=1.0)
        v_t = torch.from_numpy(val.astype(np.float32))
        step = None
        if config.hidden == 0 and config.optimizer == "lbfgs":
            start_state = _snapshot(heads, theta)
            try:
                step = _fit_linear_lbfgs(heads, xt, ia_t, ib_t, out_t, marg, w_t, eps, theta, config)
            except RuntimeError:  # the line search's step overflowed float32
                step = None
            if step is None or not _all_finite(heads, theta):
                # A handful of separable labels with ties: ε's fit has no bound, and L-BFGS's line search
                # ran away (1 seed in 60 at 12 pairs). Adam's steps are bounded: start again with it.
                _restore(heads, theta, start_state)
                step = None
        if step is None:
            step = _fit_adam(heads, xt, ia_t, ib_t, out_t, marg, w_t, v_t, eps, theta, config)
        params = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in heads.state_dict().items()}
        member_eps = (torch.nn.functional.softplus(theta.detach())[:, 0].tolist() if theta is not None
                      else [eps] * config.n_members)
    finally:
        torch.set_num_threads(prev_threads)

    ens = Ensemble(mean=mean.astype(np.float32), scale=scale.astype(np.float32), params=params)
    temperature = 1.0
    if config.calibrate and val.any():
        r = ens.member_rewards(data.feat[used])
        d = r[:, ia] - r[:, ib]
        n_val = val.sum(axis=0)
        rows = (n_val > 0) & ((data.outcome == A_WINS) | (data.outcome == B_WINS))
        d_oob = (d * val).sum(axis=0)[rows] / n_val[rows]
        temperature = fit_temperature(d_oob, data.outcome[rows] == A_WINS)
    ens.temperature = temperature
    ens.info = {"config": asdict(config), "seed": int(seed), "n_judgments": int(len(data)),
                "n_pairs": _distinct_pairs(data.ia, data.ib),
                "n_both_bad_dropped": n_dropped, "steps": int(step),
                "tie_epsilon": [round(float(e), 6) for e in member_eps],
                "train_seconds": round(time.perf_counter() - t0, 4)}
    return ens


def fit_and_evaluate(train: PairData, test: PairData | None, config: TrainConfig | None = None,
                     seed: int = 0):
    """Train on ``train`` and evaluate on ``test``: ``(Ensemble, Metrics | None)``.

    Pure: no files, no globals. ``train_ensemble`` then ``evaluate``: the
    simulator's training step, and the job's ``train`` and ``evaluate`` steps.
    """
    from rm.evaluate import evaluate

    ens = train_ensemble(train, config, seed)
    return ens, (evaluate(ens, test) if test is not None and len(test) else None)
