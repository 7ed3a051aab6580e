"""Does a feature transform fitted on every response (labelled or not) help the model or active learning?

The heads are L2-regularised Bradley-Terry models on standardised features fitted
on the labelled responses only. Two transductive alternatives, fitted once on
every response of the file (the app would fit them on every imported response):

- ``std``: standardise with the whole pool's mean and scale (an actively chosen
  labelled set is a biased sample, so its own scale is too);
- ``white`` / ``dwhite``: shrunk whitening, ``M = (1-alpha) I + alpha C`` with ``C``
  the correlation of the pool's response features (``white``) or of its pair
  differences (``dwhite``), features multiplied by ``M^-1/2`` (an L2 prior shaped
  by the pool, LDA-like);
- ``pca``: the pool's standardised response features projected on their top
  ``--k`` principal components (fewer weights to learn from few labels).

``base`` is the app's model. Each runs random against ``default`` through the
simulator's own ``run_simulation`` on tuning seeds (never 0-9) and prints
the curves at a few budgets, the area gain and the labels saved at 640.

    .venv/bin/python bench/al_feature_transforms.py base|std|white|dwhite|pca [--alpha 0.5] [--k 64] \\
        [--first-seed 100] [--seeds 20] [--repeats 4] [--strategies default]
"""
import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotate import simulate as sim  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("variant", choices=["base", "std", "white", "dwhite", "pca"])
p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"))
p.add_argument("--first-seed", type=int, default=100)
p.add_argument("--seeds", type=int, default=20)
p.add_argument("--repeats", type=int, default=4)
p.add_argument("--alpha", type=float, default=0.5)
p.add_argument("--k", type=int, default=64, help="pca: components kept")
p.add_argument("--strategies", default="default")
a = p.parse_args()
data = sim.load_dataset(a.data,
                        embedder=sim.make_embedder(ROOT / ".prefloop" / "cache")).pairs
X = data.feat.astype(np.float64)
mu, sd = X.mean(0), X.std(0) + 1e-6
if a.variant == "base":
    F = X
elif a.variant == "std":          # pool standardisation (then train re-standardises: ~identity)
    F = (X - mu) / sd
elif a.variant == "white":        # shrunk whitening over the pool's response covariance
    Z = (X - mu) / sd
    C = np.cov(Z, rowvar=False)
    M = (1 - a.alpha) * np.eye(len(C)) + a.alpha * C
    ev, V = np.linalg.eigh(M)
    F = Z @ V @ np.diag(ev ** -0.5) @ V.T
elif a.variant == "dwhite":       # shrunk whitening over the pool's pair-difference covariance
    Z = (X - mu) / sd
    D = Z[data.ia] - Z[data.ib]
    C = (D.T @ D) / len(D)
    C = C / np.trace(C) * len(C)
    M = (1 - a.alpha) * np.eye(len(C)) + a.alpha * C
    ev, V = np.linalg.eigh(M)
    F = Z @ V @ np.diag(ev ** -0.5) @ V.T
elif a.variant == "pca":          # top-k principal components of the pool's responses
    Z = (X - mu) / sd
    ev, V = np.linalg.eigh(np.cov(Z, rowvar=False))
    F = Z @ V[:, np.argsort(ev)[::-1][: a.k]]
data = replace(data, feat=np.ascontiguousarray(F, dtype=np.float32))
seeds = range(a.first_seed, a.first_seed + a.seeds)
t0 = time.perf_counter()
curves = sim.run_simulation(data, ["random", *a.strategies.split(",")], seeds, repeats=a.repeats,
                            cold_start=64, progress=False)
ref = curves[0]
print(f"{a.variant} alpha={a.alpha} k={a.k} seeds {seeds.start}-{seeds.stop-1} repeats {a.repeats}: {time.perf_counter()-t0:.0f}s")
for c in curves:
    m = c.accuracy.mean(0)
    idx = [list(c.labels).index(x) for x in (64, 128, 256, 384, 640, 992) if x in list(c.labels)]
    print(f"  {c.strategy:14s} AUC {sim.area_under_curve(c.labels, c.accuracy).mean():.3f} acc@" +
          " ".join(f"{c.labels[i]}={m[i]:.4f}" for i in idx))
for c in curves[1:]:
    cmp = sim.compare(c, ref)
    print(f"  {c.strategy} vs random: AUC gain {cmp.auc_gain:+.2f} {tuple(round(x,2) for x in cmp.auc_gain_ci)}, "
          f"saved@640 {sim.saving_text(cmp, cmp.saving, 0)} "
          f"({sim.saving_text(cmp, cmp.saving_ci[0], 0)} to {sim.saving_text(cmp, cmp.saving_ci[1], 0)}), along "
          + " / ".join(sim.saving_text(cmp, s, 0) for _, s in cmp.savings_along) + f", worst {cmp.worst_gap:+.2f}")
