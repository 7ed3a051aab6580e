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

Gate rules (``--rule``, repeat to compare; each replays the whole campaign, the same seeds):
``paired`` is the job's (both models on the same held-out pairs, rejected only when worse by more than
the tolerance at one-sided ``--confidence``, repeatable; the job's, ``PREFLOOP_PROMOTE_CONFIDENCE``, is
0.5 by default); ``accuracy`` is the rule before it (rejected when the accuracy difference alone is below
minus the tolerance: the same decisions as ``paired`` at 0.5); ``always`` promotes every model. At every
gate the rule also judges planted regressions (the active model with its predictions reversed on a random
share of the labelled held-out pairs, :data:`PLANTED`) against the active model: how often it rejects them.

    .venv/bin/python bench/retrain_gate.py [--strategy default --strategy random] [--seeds 30] \
        [--held-out-order random --held-out-order strategy] [--rule paired --rule accuracy --rule always]
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
from rm.evaluate import correct_votes, evaluate  # noqa: E402
from rm.heads import pair_probabilities  # noqa: E402
from rm.split import held_out_mask  # noqa: E402
from rm.train import TrainConfig, train_ensemble  # noqa: E402

from _data import hh_data  # noqa: E402

DEFAULT_DATA = hh_data()
PLANTED = (0.1, 0.25, 0.5)
"""Shares of pairs on which a planted regression reverses the active model's predictions (at accuracy a it
loses share x (2a - 1): about 2.4, 6 and 12 points at 62%)."""


def replay(data, test, strategy: str, seed: int, *, every: int, budget: int, cold: int, tolerance: float,
           held_out_order: str = "random", rule: str = "paired", confidence: float = retrain.GATE_CONFIDENCE):
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
            held = data.subset(te)
            new_c, act_c = correct_votes(new, held), correct_votes(active[0], held)

            def gate(candidate_c):
                # One vote per pair here: each labelled row is its own comparison.
                paired = retrain.paired_comparison(candidate_c, act_c, te) if rule == "paired" else None
                return rule == "always" or retrain.promotion_decision(
                    float(np.nanmean(candidate_c)), float(np.nanmean(act_c)), tolerance, has_active=True,
                    n_held_out=len(te), new_n_train=len(tr), active_n_train=active[1], paired=paired,
                    confidence=confidence)[0]
            promote = gate(new_c)
            # Planted regressions: the active model with its predictions reversed on a random share of pairs.
            flip_rng = np.random.default_rng([1, seed, run])
            planted = {f: not gate(np.where(flip_rng.random(len(te)) < f, 1 - act_c, act_c)) for f in PLANTED}
            new_te, act_te = float(np.nanmean(new_c)), float(np.nanmean(act_c))
            gates.append(dict(labels=len(lab), held_out=len(te), promote=promote, act_te=act_te, act_pop=active[2],
                              d_te=new_te - act_te, d_pop=new_pop - active[2], planted=planted))
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


def _mean_se(x) -> str:
    x = np.asarray(x, dtype=float)
    return f"{x.mean():+.4f} (se {x.std(ddof=1) / np.sqrt(len(x)):.4f})"


def _per_seed(by_seed, fn) -> str:
    return _mean_se([np.mean([fn(g) for g in gates]) for gates in by_seed])


def _after(g) -> float:
    """All-held-out accuracy of the model active after the gate."""
    return g["act_pop"] + (g["d_pop"] if g["promote"] else 0.0)


def _report(by_rule: dict, tolerance: float) -> None:
    """One line per figure, one column per rule."""
    names = list(by_rule)
    width = max(22, *(len(n) + 2 for n in names))
    always = by_rule.get("always")
    rows = []
    for name, by_seed in by_rule.items():
        gates = [g for seed in by_seed for g in seed]
        worse = [g for g in gates if g["d_pop"] < -tolerance]
        fine = [g for g in gates if g["d_pop"] >= -tolerance]
        last = [seed[-1:] for seed in by_seed]
        rows.append({
            "gates, rejected": f"{len(gates)}, {sum(not g['promote'] for g in gates)}",
            f"not worse than -{tolerance} on all held-out, rejected":
                f"{sum(not g['promote'] for g in fine)} of {len(fine)}",
            f"worse than -{tolerance} on all held-out, promoted": f"{sum(g['promote'] for g in worse)} of {len(worse)}",
            **{f"planted regression ({f:g} of pairs reversed), rejected":
               f"{sum(g['planted'][f] for g in gates)} of {len(gates)}" for f in PLANTED},
            "reported minus all-held-out acc. (active)": _per_seed(by_seed, lambda g: g["act_te"] - g["act_pop"]),
            "kept minus new model's acc., mean over gates": _per_seed(
                by_seed, lambda g: 0.0 if g["promote"] else -g["d_pop"]),
            "kept minus new model's acc., last gate": _per_seed(last, lambda g: 0.0 if g["promote"] else -g["d_pop"]),
            "kept model's all-held-out acc., mean over gates": _per_seed(by_seed, _after),
            "kept model's all-held-out acc., last gate": _per_seed(last, _after),
            "last gate's kept acc. minus always promoting's": "—" if always is None else _mean_se(
                [_after(s[-1]) - _after(a[-1]) for s, a in zip(by_seed, always)]),
        })
    label = max(len(k) for k in rows[0])
    print("  " + " " * label + "".join(f"{n:>{width}}" for n in names))
    for key in rows[0]:
        print(f"  {key:<{label}}" + "".join(f"{r[key]:>{width}}" for r in rows))


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
    ap.add_argument("--rule", choices=("paired", "accuracy", "always"), action="append",
                    help="the gate's rule (default: paired and always; accuracy is paired at 0.5, the job's "
                         "default, computed from the accuracies alone); repeat to compare")
    ap.add_argument("--confidence", type=float, action="append",
                    help="one-sided confidence of the paired rule (default: 0.5, 0.8 and 0.95; the job's is "
                         f"PREFLOOP_PROMOTE_CONFIDENCE, default {retrain.GATE_CONFIDENCE}); repeat to compare")
    args = ap.parse_args()
    data = load_dataset(args.data, embedder=make_embedder(args.cache_dir, None, 2)).pairs
    test = held_out_mask(data.group, retrain.TEST_FRACTION)
    print(f"{args.data.name}: {len(data)} pairs, {int(test.sum())} on held-out prompts; retrain every "
          f"{args.every} labels to {args.budget}, cold start {args.cold_start}, tolerance {args.tolerance}, "
          f"{args.seeds} seeds")
    rules = []
    for rule in args.rule or ["paired", "always"]:
        rules += ([(f"paired {c:g}", rule, c) for c in args.confidence or [0.5, 0.8, 0.95]]
                  if rule == "paired" else [(rule, rule, retrain.GATE_CONFIDENCE)])
    for strategy in args.strategy or ["default", "random"]:
        for order in args.held_out_order or ["random"]:
            by_rule = {name: [replay(data, test, strategy, s, every=args.every, budget=args.budget,
                                     cold=args.cold_start, tolerance=args.tolerance, held_out_order=order,
                                     rule=rule, confidence=confidence) for s in range(args.seeds)]
                       for name, rule, confidence in rules}
            gates = [g for seed in next(iter(by_rule.values())) for g in seed]
            print(f"{strategy}, held-out pairs queued {'at random' if order == 'random' else 'by the strategy'}: "
                  f"median {np.median([g['held_out'] for g in gates]):.0f} labelled held-out pairs per gate, "
                  f"gate's accuracy difference minus all-held-out one: sd per gate "
                  f"{np.std([g['d_te'] - g['d_pop'] for g in gates]):.4f}")
            _report(by_rule, args.tolerance)


if __name__ == "__main__":
    main()
