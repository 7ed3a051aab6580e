"""Held-out quality of the default reward model on HH-RLHF harmless (test file).

Each row's two transcripts share everything up to the final ``\\n\\nAssistant:``
turn: prompt = the shared part, responses = what follows. Rows that differ
earlier are skipped and counted. Pairs are split 70/30 by prompt with a
different salt per seed; A/B order is randomised per pair (seeded). Embeddings
are cached on disk, so reruns skip the encoder.

    .venv/bin/python bench/rm_quality.py [--seeds 5] [--cache-dir .prefloop/cache]
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rm.cache import EmbeddingCache  # noqa: E402
from rm.data import A_WINS, B_WINS, PairData  # noqa: E402
from rm.encoder import Encoder, EncoderConfig  # noqa: E402
from rm.features import FeatureSpec, build_features  # noqa: E402
from rm.split import held_out_mask  # noqa: E402
from rm.train import TrainConfig, effective_l2, fit_and_evaluate  # noqa: E402

from _data import hh_data  # noqa: E402

DEFAULT_DATA = hh_data()
MARKER = "\n\nAssistant:"


def load_hh(path: Path):
    """``(prompts, chosen, rejected, n_skipped)`` from an HH-RLHF jsonl.gz file."""
    prompts, chosen, rejected, skipped = [], [], [], 0
    with gzip.open(path, "rt") as f:
        for line in f:
            row = json.loads(line)
            c, r = row["chosen"], row["rejected"]
            ic, ir = c.rfind(MARKER), r.rfind(MARKER)
            if ic < 0 or c[:ic] != r[:ir]:
                skipped += 1
                continue
            prompts.append(c[:ic])
            chosen.append(c[ic + len(MARKER):].strip())
            rejected.append(r[ir + len(MARKER):].strip())
    return prompts, chosen, rejected, skipped


def pair_data(prompts, chosen, rejected, feat, seed=0) -> PairData:
    """Pairs over ``feat`` rows [chosen..., rejected...], A/B order randomised."""
    n = len(prompts)
    flip = np.random.default_rng(seed).random(n) < 0.5
    c_rows, r_rows = np.arange(n), np.arange(n, 2 * n)
    length = np.array([len(t) for t in chosen + rejected])
    return PairData(feat, np.where(flip, r_rows, c_rows), np.where(flip, c_rows, r_rows),
                    np.where(flip, B_WINS, A_WINS), group=np.asarray(prompts, dtype=object), length=length)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache-dir", type=Path, default=ROOT / ".prefloop" / "cache")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--features", default=",".join(FeatureSpec().parts))
    ap.add_argument("--layers", default=",".join(str(x) for x in EncoderConfig().layers))
    ap.add_argument("--max-length", type=int, default=EncoderConfig().max_length)
    ap.add_argument("--l2", type=float, default=TrainConfig().l2, help="default: TrainConfig's")
    ap.add_argument("--hidden", type=int, default=TrainConfig().hidden)
    ap.add_argument("--members", type=int, default=TrainConfig().n_members)
    ap.add_argument("--json", type=Path, help="also write per-seed metrics here")
    args = ap.parse_args(argv)

    prompts, chosen, rejected, skipped = load_hh(args.data)
    enc = Encoder(config=EncoderConfig(max_length=args.max_length,
                                       layers=tuple(int(x) for x in args.layers.split(","))))
    spec = FeatureSpec(tuple(args.features.split(",")))
    cfg = TrainConfig(l2=args.l2, hidden=args.hidden, n_members=args.members)
    cache = EmbeddingCache(args.cache_dir, enc)
    t0 = time.perf_counter()
    feat = build_features(prompts + prompts, chosen + rejected, cache, spec)
    embed_s = time.perf_counter() - t0
    data = pair_data(prompts, chosen, rejected, feat)

    per_seed, train_s = [], []
    for seed in range(args.seeds):
        test = held_out_mask(prompts, args.test_fraction, salt=f"rm_quality-{seed}")
        t = time.perf_counter()
        ens, metrics = fit_and_evaluate(data.subset(~test), data.subset(test), cfg, seed=seed)
        train_s.append(time.perf_counter() - t)
        d = metrics.summary()
        d["temperature"] = ens.temperature
        per_seed.append(d)

    print(f"data: {args.data.name}  pairs={len(prompts)}  skipped_rows={skipped}  "
          f"test_fraction={args.test_fraction}  seeds={args.seeds}")
    print(f"encoder: {enc.encoder_id}  layers={enc.config.layers}  max_length={enc.config.max_length}  "
          f"features={'+'.join(spec.parts)}  dim={feat.shape[1]}")
    print(f"heads: members={cfg.n_members} hidden={cfg.hidden} l2={effective_l2(cfg)} tie_epsilon={cfg.tie_epsilon}")
    print(f"embed_seconds={embed_s:.1f} (newly embedded: {cache.n_computed})  "
          f"train_eval_seconds_per_seed={np.mean(train_s):.2f}")
    print(f"test_pairs_per_seed={[int(d['n_decisive']) for d in per_seed]}")
    for key in ("accuracy", "log_loss", "ece", "length_baseline_accuracy", "length_longer_wins_accuracy",
                "reward_length_spearman", "ensemble_prob_std", "temperature"):
        vals = np.array([d[key] for d in per_seed], dtype=float)
        print(f"{key:28s} {vals.mean():.4f} ± {vals.std():.4f}   per-seed {' '.join(f'{v:.4f}' for v in vals)}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "per_seed": per_seed}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
