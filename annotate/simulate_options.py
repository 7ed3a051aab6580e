"""Options of ``prefloop simulate``, declared once for the CLI and ``python -m annotate.simulate``.

Kept free of numpy and the rest of the simulator so that ``prefloop --help`` and
every other command start without importing them.
"""

from __future__ import annotations

REFERENCE_BUDGET = 640
"""Default ``--reference-budget``: the report says how many labels each strategy needs to reach
random's accuracy at this many labels."""

REPEATS = 16
"""Replays per seed, each with its own random streams; a seed's curve is their mean.

One random order per seed is a noisy estimate of what random order gives: on the
HH-RLHF harmless test file, random's mean area under the curve over seeds 0-9
moved by 0.2 points (s.d.; 62.55 to 63.17 over 18 streams) with the random stream
alone, bald+diverse's by 0.08. Four replays were not enough either: on seeds 0-9,
four disjoint sets of 4 streams (``bench/al_stream_spread.py``) gave default's
area gain over random as +0.42, +0.05, +0.12 and +0.17 points and its labels saved
at 640 as 32%, never reached, -8% and 45%, so one 4-replay verdict said "saves
labels" and the next "not distinguishable". 16 replays (the four sets pooled)
gave +0.19 (95% CI +0.08 to +0.31) and -7%; the stream noise in the area gain is
then about 0.08 points (s.d.), half the 4-replay figure. The cost is linear:
3 min 19 s for the HH file's 10 seeds on 2 cores with a warm embedding cache (4 replays: 60 s)."""


def add_arguments(p) -> None:
    """Add every ``prefloop simulate`` option to the ``argparse`` parser ``p``."""
    p.add_argument("--data", required=True,
                   help="labelled file in any format 'prefloop import' reads (pairs, k-wise, TRL or HH-RLHF; "
                        "JSON Lines, .jsonl.gz, JSON or CSV) with known winners")
    p.add_argument("--strategy", action="append", default=None,
                   help="acquisition strategy to compare (repeat for several; 'random' is always included as "
                        "the reference; 'default' is the app's default; default: random and default)")
    p.add_argument("--seed-labels", type=int, default=32, help="random labels every run starts from (default: 32)")
    p.add_argument("--batch", type=int, default=32, help="labels per retrain (default: 32)")
    p.add_argument("--budget", type=int, default=1000, help="labels at which each run stops (default: 1000)")
    p.add_argument("--seeds", type=int, default=10,
                   help="independent seeds (held-out split and seed labels); the confidence intervals are "
                        "over seeds (default: 10)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="first seed (default: 0); choose a strategy on one range of seeds, report it on another")
    p.add_argument("--repeats", type=int, default=REPEATS,
                   help=f"replays per seed with other random streams; each seed's curve is their mean "
                        f"(default: {REPEATS}; fewer run proportionally faster, but with 4 the verdict on the "
                        f"HH-RLHF file changed with the streams alone)")
    p.add_argument("--reference-budget", type=float, default=REFERENCE_BUDGET,
                   help=f"compare labels needed to reach random's accuracy at this many labels "
                        f"(default: {REFERENCE_BUDGET})")
    p.add_argument("--cold-start", type=int, default=None,
                   help="random order until this many labels (default: PREFLOOP_COLD_START, the app's setting); "
                        "a run whose last batch comes before it is refused, as every curve would be random's")
    p.add_argument("--cache-dir", default=None, help="embedding cache (default: <PREFLOOP_DATA_DIR>/cache)")
    p.add_argument("--out", default="simulation",
                   help="folder for curves.json and curves.png (created if missing, in a folder that must exist), "
                        "checked before the run and written at its end, both or neither (default: ./simulation)")
