"""How much could *any* choice of labels save on a dataset? A hindsight check for ``prefloop simulate``.

For each seed (the simulator's held-out split by prompt), a model is trained
on every training pair; then subsets of the training pairs are picked *with
that hindsight* and a model trained on each subset is scored on the held-out
prompts, next to a random subset of the same size:

- ``clean``: pairs whose recorded label the full model agrees with most;
- ``large gap``: pairs with the largest full-model reward gap |r_A - r_B|;
- ``near boundary``: the smallest gap (what uncertainty sampling converges to);
- ``random``.

No acquisition strategy can know the full model, so these rules bound what
the simple "easy/clean" and "uncertain" heuristics could reach. The printout
compares them with random order at the simulator's reference budget: a
strategy saves 40% when it reaches random@640 with 384 labels.

    .venv/bin/python bench/al_hindsight.py [--data FILE] [--seeds 10] [--first-seed 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotate import simulate as sim  # noqa: E402
from rm.data import A_WINS  # noqa: E402
from rm.split import held_out_mask  # noqa: E402
from rm.train import fit_and_evaluate  # noqa: E402

from _data import hh_data  # noqa: E402

DEFAULT_DATA = hh_data()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=100, help="tuning seeds by default, not the report's 0-9")
    p.add_argument("--sizes", default="384,640")
    p.add_argument("--cache-dir", default=str(ROOT / ".prefloop" / "cache"))
    args = p.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]

    t0 = time.perf_counter()
    data = sim.load_dataset(args.data, embedder=sim.make_embedder(args.cache_dir)).pairs
    outcome = np.asarray(data.outcome)
    results: dict[str, list[float]] = {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        test_mask = held_out_mask(data.group, sim.TEST_FRACTION, salt=f"simulate-{seed}")
        train, test = np.flatnonzero(~test_mask), data.subset(test_mask)
        ens, metrics = fit_and_evaluate(data.subset(train), test, None, seed=seed)
        results.setdefault("all training pairs (~70%)", []).append(metrics.accuracy)
        reward = ens.member_rewards(data.feat).mean(axis=0)
        gap = reward[data.ia[train]] - reward[data.ib[train]]
        agree = gap * np.where(outcome[train] == A_WINS, 1.0, -1.0)  # > 0: the full model sides with the label
        rng = np.random.default_rng([seed, 1])
        for n in sizes:
            picks = {"random": rng.choice(len(train), min(n, len(train)), replace=False),
                     "clean": np.argsort(-agree)[:n], "large gap": np.argsort(-np.abs(gap))[:n],
                     "near boundary": np.argsort(np.abs(gap))[:n]}
            for name, rows in picks.items():
                _, m = fit_and_evaluate(data.subset(np.sort(train[rows])), test, None, seed=seed)
                results.setdefault(f"{name} @ {n}", []).append(m.accuracy)
    print(f"{args.data}: {len(data)} pairs, seeds {args.first_seed}-{args.first_seed + args.seeds - 1}, "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"{'training subset':34s} held-out accuracy (mean ± s.e. over seeds)")
    for name, acc in results.items():
        acc = np.asarray(acc) * 100
        print(f"{name:34s} {acc.mean():6.2f} ± {acc.std(ddof=1) / np.sqrt(len(acc)):.2f}")


if __name__ == "__main__":
    main()
