"""Would a label-flip likelihood for the heads learn faster from noisy human labels?

The heads fit Bradley–Terry, ``P(label) = σ(s)`` with ``s`` the signed reward
gap: a label the model contradicts confidently pulls on the weights without
bound. Under a flip-noise model ``P(label) = η + (1 - 2η)·σ(s)`` (a share
``2η`` of labels are coin tosses) that pull is bounded. This trains the app's
linear heads both ways on random training subsets of each seed's split (the
simulator's held-out split by prompt) and prints held-out accuracy per size,
so a likelihood change can be judged before it goes near the app.

    .venv/bin/python bench/rm_flip_likelihood.py [--eta 0,0.1,0.2,0.3] [--data FILE] [--seeds 10]
        [--first-seed 100] [--draws 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rm.train as train_mod  # noqa: E402
from annotate import simulate as sim  # noqa: E402
from rm.data import B_WINS  # noqa: E402
from rm.split import held_out_mask  # noqa: E402

from _data import hh_data  # noqa: E402

DEFAULT_DATA = hh_data()
SIZES = (128, 256, 384, 640)
_app_fit = train_mod._fit_linear_lbfgs
_eta = [0.0]


def _fit_flip(heads, xt, ia_t, ib_t, out_t, marg, w_t, eps, theta, config) -> int:
    """``rm.train._fit_linear_lbfgs`` with the flip-noise likelihood (tie-free data only)."""
    if _eta[0] == 0.0 or eps or theta is not None:
        return _app_fit(heads, xt, ia_t, ib_t, out_t, marg, w_t, eps, theta, config)
    eta = _eta[0]
    delta = xt[ia_t] - xt[ib_t]
    l2 = train_mod.effective_l2(config) / len(ia_t)
    opt = torch.optim.LBFGS(list(heads.parameters()), lr=1.0, max_iter=config.max_steps, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        d = heads.w @ delta.T
        s = torch.where(out_t == B_WINS, -d, d) - marg
        losses = -torch.log(eta + (1 - 2 * eta) * torch.sigmoid(s))
        obj = ((losses * w_t).sum(dim=1) + 0.5 * l2 * heads.penalty()).sum()
        obj.backward()
        return obj

    opt.step(closure)
    return int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eta", default="0,0.1,0.2,0.3", help="flip rates; 0 is the app's Bradley–Terry")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=100, help="tuning seeds by default, not the report's 0-9")
    p.add_argument("--draws", type=int, default=3, help="random subsets per seed and size")
    p.add_argument("--cache-dir", default=str(ROOT / ".prefloop" / "cache"))
    args = p.parse_args()
    etas = [float(x) for x in args.eta.split(",")]
    train_mod._fit_linear_lbfgs = _fit_flip

    t0 = time.perf_counter()
    data = sim.load_dataset(args.data, embedder=sim.make_embedder(args.cache_dir)).pairs
    acc: dict[tuple[float, str], list[float]] = {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        test_mask = held_out_mask(data.group, sim.TEST_FRACTION, salt=f"simulate-{seed}")
        train, test = np.flatnonzero(~test_mask), data.subset(test_mask)
        subsets = [("all", train)]
        for draw in range(args.draws):
            perm = np.random.default_rng([seed, draw, 7]).permutation(train)
            subsets += [(str(n), np.sort(perm[:n])) for n in SIZES if n < len(train)]
        for size, rows in subsets:
            for eta in etas:
                _eta[0] = eta
                _, m = train_mod.fit_and_evaluate(data.subset(rows), test, None, seed=seed)
                acc.setdefault((eta, size), []).append(m.accuracy)
    sizes = [str(n) for n in SIZES] + ["all"]
    print(f"{args.data}: {len(data)} pairs, seeds {args.first_seed}-{args.first_seed + args.seeds - 1}, "
          f"{args.draws} random subsets per size, {time.perf_counter() - t0:.0f} s")
    print("held-out accuracy, % (mean over seeds and subsets; 'all' = every training pair)")
    print(f"{'flip rate η':12s}" + "".join(f"{s:>9s}" for s in sizes))
    for eta in etas:
        print(f"{eta:<12g}" + "".join(f"{100 * np.mean(acc[(eta, s)]):9.2f}" for s in sizes))


if __name__ == "__main__":
    main()
