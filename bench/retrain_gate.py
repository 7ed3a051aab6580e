"""How well the retraining job's promotion gate judges models when held-out labels arrive in queue order.

Replays a labelled file (HH-RLHF harmless by default) through the job's pieces: the split by
prompt (``rm.split``, ``annotate.retrain.TEST_FRACTION``), training on the training side's labels
(``rm.train``), the gate (``annotate.retrain.promotion_decision``, the default tolerance), and the
queue order of the active model (``annotate.retrain._priorities``, which queues held-out prompts'
pairs at random among the strategy's; ``--held-out-order strategy`` replays the job before that, which
let the strategy order them too). Annotators label the top of the queue, both sides of the split,
``--every`` pairs between retrains, after a random cold start.
At every gate the new and the active model are also evaluated on *all* held-out pairs of the
file, the population the labelled held-out pairs stand for. Figures are means over seeds with
the standard error across seeds (gates of one seed share their held-out labels).

    .venv/bin/python bench/retrain_gate.py [--strategy default --strategy random] [--seeds 30] \
        [--held-out-order random --held-out-order strategy]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotate import retrain  # noqa: E402
from annotate.campaign import CampaignOptions  # noqa: E402
from annotate.simulate import load_dataset, make_embedder  # noqa: E402
from rm.evaluate import evaluate  # noqa: E402
from rm.heads import pair_probabilities  # noqa: E402
from rm.split import held_out_mask  # noqa: E402
from rm.train import TrainConfig, train_ensemble  # noqa: E402

DEFAULT_DATA = Path("/work/shared/data/hh-rlhf-harmless-base-test.jsonl.gz")


def replay(data, test, strategy: str, seed: int, *, every: int, budget: int, cold: int, tolerance: float,
           held_out_order: str = "random"):
    """One seed: a dict per gate (labels, held-out labels, accuracy deltas, decision)."""
    n = len(data)
    pop = data.subset(test)
    opts = CampaignOptions(overlap=1, max_overlap=1, gold_rate=0, probe_rate=0, strategy=strategy, batch_size=32,
                           cold_start=cold, retrain_every_labels=every, retrain_every_minutes=30,
                           target_judgments=0, guidelines="")
    groups = np.unique(data.group, return_inverse=True)[1]
    rng = np.random.default_rng(seed)
    labelled = list(rng.permutation(n)[:cold])
    active, run, gates = None, 0, []
    while len(labelled) < budget:
        run += 1
        lab = np.array(labelled)
        tr, te = lab[~test[lab]], lab[test[lab]]
        new = train_ensemble(data.subset(tr), TrainConfig(num_threads=1), seed=run)
        new_pop = evaluate(new, pop).accuracy
        if active is None:
            promote = True
        else:
            new_te, act_te = evaluate(new, data.subset(te)).accuracy, evaluate(active[0], data.subset(te)).accuracy
            promote, _ = retrain.promotion_decision(new_te, act_te, tolerance, has_active=True, n_held_out=len(te),
                                                    new_n_train=len(tr), active_n_train=active[1])
            gates.append(dict(labels=len(lab), held_out=len(te), promote=promote, act_te=act_te, act_pop=active[2],
                              d_te=new_te - act_te, d_pop=new_pop - active[2]))
        if promote:
            active = (new, len(tr), new_pop)
        ens = active[0]
        open_ = np.setdiff1d(np.arange(n), lab)
        probs = pair_probabilities(ens.member_rewards(data.feat), data.ia[open_], data.ib[open_])
        inv = 1.0 / ens.scale
        priority, _, _ = retrain._priorities(
            probs, ia=data.ia[open_], ib=data.ib[open_], groups=groups[open_],
            labelled=(data.ia[lab], data.ib[lab]), features_of=lambda rows: data.feat[rows] * inv,
            n_rows=len(data.feat), dim=data.feat.shape[1], options=opts, rng=np.random.default_rng([0, seed, run]),
            **({"held_out": test[open_], "labelled_held_out": test[lab]} if held_out_order == "random" else {}))
        labelled += list(open_[np.argsort(-priority)[:every]])
    return gates


def _per_seed(by_seed, fn) -> str:
    x = np.array([np.mean([fn(g) for g in gates]) for gates in by_seed])
    return f"{x.mean():+.4f} (se {x.std(ddof=1) / np.sqrt(len(x)):.4f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache-dir", type=Path, default=Path(".prefloop/cache"))
    ap.add_argument("--strategy", action="append")
    ap.add_argument("--seeds", type=int, default=30)
    ap.add_argument("--every", type=int, default=64, help="labels between retrains")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--cold-start", type=int, default=64)
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--held-out-order", choices=("random", "strategy"), action="append",
                    help="how held-out prompts' pairs are queued: at random, as the job does since this option "
                         "was added (default), or by the strategy like the others, as it did before; repeat to "
                         "compare")
    args = ap.parse_args()
    data = load_dataset(args.data, embedder=make_embedder(args.cache_dir, None, 2)).pairs
    test = held_out_mask(data.group, retrain.TEST_FRACTION)
    print(f"{args.data.name}: {len(data)} pairs, {int(test.sum())} on held-out prompts; retrain every "
          f"{args.every} labels to {args.budget}, cold start {args.cold_start}, tolerance {args.tolerance}")
    runs = [(strategy, order) for strategy in args.strategy or ["default", "random"]
            for order in args.held_out_order or ["random"]]
    for strategy, order in runs:
        by_seed = [replay(data, test, strategy, s, every=args.every, budget=args.budget, cold=args.cold_start,
                          tolerance=args.tolerance, held_out_order=order) for s in range(args.seeds)]
        gates = [g for seed in by_seed for g in seed]
        worse = [g for g in gates if g["d_pop"] < -args.tolerance]
        fine = [g for g in gates if g["d_pop"] >= -args.tolerance]
        print(f"{strategy}, held-out pairs queued {'at random' if order == 'random' else 'by the strategy'}: "
              f"{args.seeds} seeds, {len(gates)} gates, median "
              f"{np.median([g['held_out'] for g in gates]):.0f} labelled held-out pairs per gate")
        print("  active model's accuracy, labelled held-out minus all held-out:",
              _per_seed(by_seed, lambda g: g["act_te"] - g["act_pop"]))
        print("  gate's new-minus-active accuracy, labelled held-out minus all held-out:",
              _per_seed(by_seed, lambda g: g["d_te"] - g["d_pop"]),
              f"(sd per gate {np.std([g['d_te'] - g['d_pop'] for g in gates]):.4f})")
        print(f"  new models worse by more than the tolerance on all held-out pairs: {len(worse)}, "
              f"promoted {sum(g['promote'] for g in worse)}; the others: {len(fine)}, "
              f"rejected {sum(not g['promote'] for g in fine)}")
        print("  all-held-out accuracy of the model active after the gate minus the new one's:",
              _per_seed(by_seed, lambda g: 0.0 if g["promote"] else -g["d_pop"]),
              "; at the last gate:", _per_seed([seed[-1:] for seed in by_seed],
                                               lambda g: 0.0 if g["promote"] else -g["d_pop"]))
        after = lambda g: g["act_pop"] + (g["d_pop"] if g["promote"] else 0.0)  # noqa: E731
        print("  all-held-out accuracy of the model active after the gate, mean over gates:",
              _per_seed(by_seed, after), "; at the last gate:", _per_seed([seed[-1:] for seed in by_seed], after))


if __name__ == "__main__":
    main()
