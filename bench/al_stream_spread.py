"""How much does one ``prefloop simulate`` verdict move with the random streams alone?

``prefloop simulate`` replays each seed ``--repeats`` times (streams 0 to
repeats-1) and reports the mean. Its figures are still draws: another set of
streams (or another CPU, whose rounding makes k-means++ and tie-breaks pick
other pairs) gives other numbers for the same seeds. This script runs the
simulator's comparison on ``--sets`` disjoint sets of streams (set k uses
streams ``k × repeats`` to ``(k + 1) × repeats - 1``; set 0 is exactly what
``prefloop simulate`` runs), prints each set's area gain and labels saved at the
reference budget, and then the comparison with all sets' replays pooled
(``sets × repeats`` replays per seed).

    .venv/bin/python bench/al_stream_spread.py [--strategy default] [--first-seed 0] [--seeds 10] \\
        [--sets 4] [--repeats 4] [--data FILE]

Seeds 0-9 are the report's seeds; nothing here is tuned on them: the strategy
is fixed and only the number of replays changes.
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

from _data import hh_data  # noqa: E402

DEFAULT_DATA = hh_data()


def _line(label: str, c: sim.Comparison) -> str:
    return (f"{label:18s} AUC {c.auc_gain:+.2f} ({c.auc_gain_ci[0]:+.2f} to {c.auc_gain_ci[1]:+.2f})  "
            f"saved at {c.reference_budget:.0f}: {sim.saving_text(c, c.saving):>6s} "
            f"({sim.saving_text(c, c.saving_ci[0])} to {sim.saving_text(c, c.saving_ci[1])})  "
            f"worst {c.worst_gap:+.2f} at {c.worst_gap_at}")


def pooled(curves: list[sim.Curves]) -> sim.Curves:
    """One ``Curves`` whose seed rows average every set's rows (equal replays per set)."""
    first = curves[0]
    return sim.Curves(first.strategy, first.labels, np.mean([c.accuracy for c in curves], axis=0),
                      np.mean([c.log_loss for c in curves], axis=0), sum(c.seconds for c in curves),
                      sum(c.repeats for c in curves))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategy", default="default")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--sets", type=int, default=4)
    p.add_argument("--repeats", type=int, default=4,
                   help="replays per set (default: 4, the simulator's default until 16 replaced it)")
    p.add_argument("--cold-start", type=int, default=None,
                   help="random order until this many labels (default: PREFLOOP_COLD_START, as prefloop simulate)")
    p.add_argument("--cache-dir", default=str(ROOT / ".prefloop" / "cache"))
    args = p.parse_args()
    if args.sets < 1 or args.repeats < 1:
        p.error("--sets and --repeats must be at least 1")

    from annotate.settings import load_settings

    cold_start = load_settings().cold_start if args.cold_start is None else args.cold_start
    t0 = time.perf_counter()
    data = sim.load_dataset(args.data, embedder=sim.make_embedder(args.cache_dir)).pairs
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    runs, comps = [], []
    for k in range(args.sets):
        ref, cur = sim.run_simulation(data, ["random", args.strategy], seeds, repeats=args.repeats,
                                      cold_start=cold_start, first_stream=k * args.repeats, progress=False)
        runs.append((ref, cur))
        streams = f"streams {k * args.repeats}-{(k + 1) * args.repeats - 1}"
        comps.append(sim.compare(cur, ref))
        print(_line(streams, comps[-1]), flush=True)
    ref, cur = pooled([r for r, _ in runs]), pooled([c for _, c in runs])
    both = sim.compare(cur, ref)
    print(f"\n{args.strategy} vs random, seeds {seeds.start}-{seeds.stop - 1}, {args.sets} sets of "
          f"{args.repeats} replays, cold start {cold_start}; {time.perf_counter() - t0:.0f} s")
    print(f"over the sets: AUC gain {min(c.auc_gain for c in comps):+.2f} to {max(c.auc_gain for c in comps):+.2f}, "
          f"saved at {both.reference_budget:.0f} {min(c.saving for c in comps) * 100:.1f}% to "
          f"{max(c.saving for c in comps) * 100:.1f}%")
    print(_line(f"pooled ({args.sets * args.repeats} replays)", both))
    along = " / ".join(f"{sv * 100:.0f}% at {b:.0f}" if np.isfinite(sv) else f"not reached at {b:.0f}"
                       for b, sv in both.savings_along)
    print(f"  random's accuracy at {both.reference_budget:.0f}: {both.target_accuracy:.4f}; "
          f"{args.strategy} needs {both.needed:.0f} labels; saved along the curve: {along}")
    print(f"  verdict: {both.verdict}")


if __name__ == "__main__":
    main()
