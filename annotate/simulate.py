"""Replay a labelled dataset to compare acquisition strategies (``prefloop simulate``).

The simulator answers every query with the label recorded in the file, so a
team can see on its own data how many labels a strategy saves against random
order. Everything that decides the outcome is shared with the retraining job:
features through ``rm``'s embedding cache, ``rm.train.train_ensemble`` and
``rm.evaluate.evaluate`` with the default configuration (``fit_and_evaluate``),
the held-out split by prompt from ``rm.split``, and the queue order of
``rm.acquisition.queue_order``, which the retraining job writes as priorities.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from annotate.errors import PrefloopError

from annotate.simulate_options import REFERENCE_BUDGET, REPEATS, add_arguments

TEST_FRACTION = 0.3


@dataclass
class Dataset:
    """A labelled file as ``rm`` data: response features and every known-winner pair.

    Attributes:
        pairs: ``PairData`` over all usable pairs (``group`` = prompt hash,
            ``length`` = response characters).
        n_rows: Comparisons read from the file.
        notes: What was skipped and why.
    """

    pairs: object
    n_rows: int
    notes: list[str] = field(default_factory=list)


def load_dataset(path: str | Path, *, embedder, features=None) -> Dataset:
    """Parse ``path`` (any importable format) and featurize each distinct response once.

    Comparisons without a known winner are skipped, and a pair several rows
    give (several raters, say) is replayed once with the majority of their
    winners, as the preference export takes it, or skipped without one (notes
    say how many). ``embedder`` is an ``rm.cache.EmbeddingCache``.
    """
    from annotate.ingest import majority, parse_file
    from rm.data import PairData, outcome_code
    from rm.features import FeatureSpec, build_features

    parsed = parse_file(path)
    notes = list(parsed.notes)
    if parsed.problems:
        notes.append(f"{'at least ' if parsed.stopped_at else ''}{parsed.problem_count:,} rows could not be read "
                     "and were skipped "
                     f"(first: line {parsed.problems[0][0]}: {parsed.problems[0][1]})")
    rows: dict[tuple[str, str], int] = {}
    prompts, responses = [], []
    ia, ib, outcome, group = [], [], [], []
    no_winner = 0

    def row(prompt, p_hash, text, t_hash):
        key = (p_hash, t_hash)
        if key not in rows:
            rows[key] = len(responses)
            prompts.append(prompt)
            responses.append(text)
        return rows[key]

    firsts, votes = {}, {}  # pair -> its first row with a winner, and every such row's winner in that row's A/B
    for c in parsed.comparisons:
        if c.winner is None:
            no_winner += 1
            continue
        first = firsts.setdefault(c.pair_key, c)
        winner = c.winner.value
        if c.hash_a != first.hash_a and winner in ("a", "b"):  # a row that gives the pair the other way round
            winner = "b" if winner == "a" else "a"
        votes.setdefault(c.pair_key, []).append(winner)
    repeated = no_majority = 0
    for key, c in firsts.items():
        winner = majority(Counter(votes[key]))  # the preference export's rule
        repeated += len(votes[key]) > 1
        if winner is None:
            no_majority += 1
            continue
        ia.append(row(c.prompt, c.prompt_hash, c.response_a, c.hash_a))
        ib.append(row(c.prompt, c.prompt_hash, c.response_b, c.hash_b))
        outcome.append(outcome_code(winner))
        group.append(c.prompt_hash)
    if no_winner:
        notes.append(f"{no_winner} comparisons have no known winner and were skipped"
                     + (" (pairs of a k-wise row's responses that its 'comparisons' do not judge)"
                        if parsed.format == "kwise" else ""))
    if repeated:
        notes.append(f"{repeated} comparisons are given by several rows and replayed once, with the majority of "
                     "their winners (as the preference export takes it)"
                     + (f"; {no_majority} without one {'was' if no_majority == 1 else 'were'} skipped"
                        if no_majority else ""))
    n_ties, n_both_bad = outcome.count(outcome_code("tie")), outcome.count(outcome_code("both_bad"))
    if n_ties or n_both_bad:
        notes.append(f"{n_ties} ties and {n_both_bad} both-bad labels are replayed like the others (a tie "
                     "trains the model, a both-bad label costs a label and trains nothing); held-out "
                     "accuracy counts only pairs with a winner (a or b)")
    if not ia:
        raise PrefloopError(f"{path} has no comparisons with a known winner; the simulator replays "
                            "recorded labels, so give it a file with chosen/rejected or winner fields")
    feat = build_features(prompts, responses, embedder, features or FeatureSpec())
    pairs = PairData(feat, np.asarray(ia), np.asarray(ib), np.asarray(outcome),
                     group=np.asarray(group, dtype=object),
                     length=np.asarray([len(r) for r in responses]))
    return Dataset(pairs=pairs, n_rows=len(parsed.comparisons), notes=notes)


def make_embedder(cache_dir: str | Path, encoder_path: str | None = None, num_threads: int = 2):
    """The embedding cache the retraining job uses, rooted at ``cache_dir``."""
    from rm.cache import EmbeddingCache
    from rm.encoder import Encoder

    return EmbeddingCache(cache_dir, Encoder(encoder_path or None, num_threads=num_threads))


# --------------------------------------------------------------------------- the replay


@dataclass
class Curves:
    """Learning curves of one strategy: ``accuracy[s, k]`` for seed s after ``labels[k]`` labels."""

    strategy: str
    labels: np.ndarray
    accuracy: np.ndarray
    log_loss: np.ndarray
    seconds: float = 0.0
    repeats: int = 1
    """Replays averaged into each seed's row (``run_simulation``'s ``repeats``)."""


def _strategy_seed(name: str) -> int:
    """The strategy's part of its random stream's seed: crc32 of its canonical name.

    Every name ``rm.acquisition.get_strategy`` takes for one strategy (any case,
    surrounding spaces, ``default`` and what it resolves to) gives the same
    stream, so two names of one strategy give the same curves. The strategy
    ``default`` resolves to (``rm.acquisition.DEFAULT_STRATEGY``) is seeded by
    ``"default"``, so the default's figures are the same whichever of its names
    is typed (and stay those published for ``--strategy default``). A name the
    app does not know (a variant a bench script's own ``get_strategy`` builds)
    is seeded as given.
    """
    import zlib

    from rm.acquisition import get_strategy, strategy_names

    key = (name or "default").strip().lower()
    if key not in strategy_names():
        return zlib.crc32(name.encode())
    canonical = get_strategy(key).name
    return zlib.crc32(b"default" if canonical == get_strategy("default").name else canonical.encode())


def label_schedule(seed_labels: int, batch: int, budget: int, pool_size: int) -> np.ndarray:
    """Label counts after each retrain: seed labels, then one batch at a time up to the budget."""
    end = min(budget, pool_size)
    start = min(seed_labels, end)
    steps = list(range(start, end, batch)) + [end]
    return np.asarray(sorted(set(steps)), dtype=np.int64)


def simulate_seed(data, strategy_name: str, seed: int, *, seed_labels: int = 32, batch: int = 32,
                  budget: int = 1000, cold_start: int | None = None, config=None,
                  test_fraction: float = TEST_FRACTION, stream: int = 0,
                  on_step=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One replay: ``(labels, accuracy, log_loss)`` per retrain for one seed and strategy.

    ``data`` is a ``PairData`` with recorded outcomes and prompt groups. The
    held-out prompts (``rm.split``, salted by ``seed``) and the random seed
    labels depend only on ``seed``, so strategies are compared on the same
    draws. Each round trains with ``rm.train.fit_and_evaluate`` (the retraining
    job's training and evaluation), builds the pool with ``rm.acquisition.make_pool``
    and takes the next batch from the front of ``rm.acquisition.queue_order`` (the
    job's queue order; ``random`` until ``cold_start`` labels), whose recorded labels are
    then revealed. ``stream`` picks other random draws for the cold start, random
    order and any sampling in the strategy (same split and seed labels).
    """
    from rm.acquisition import get_strategy, make_pool, queue_order, select_strategy
    from rm.data import BOTH_BAD
    from rm.split import held_out_mask
    from rm.train import fit_and_evaluate

    cold_start = seed_labels if cold_start is None else cold_start
    test_mask = held_out_mask(data.group, test_fraction, salt=f"simulate-{seed}")
    train_rows = np.flatnonzero(~test_mask)
    test = data.subset(test_mask)
    if not len(train_rows) or not len(test):
        raise PrefloopError("the dataset is too small to hold out a test split by prompt; "
                            "give the simulator more prompts")
    schedule = label_schedule(seed_labels, batch, budget, len(train_rows))
    draw = np.random.default_rng([seed, 0])
    labelled = list(draw.permutation(train_rows)[: schedule[0]])
    is_open = np.ones(len(data), dtype=bool)
    is_open[test_mask] = False
    is_open[labelled] = False
    extra = [stream] if stream else []
    rng = np.random.default_rng([seed, _strategy_seed(strategy_name), *extra])
    # Cold-start batches draw from the random strategy's own stream, so every
    # strategy's curve matches random's exactly until the cold start ends.
    cold_rng = np.random.default_rng([seed, _strategy_seed("random"), *extra])
    if get_strategy(strategy_name).name == "random":
        rng = cold_rng
    accs, losses = [], []
    for k, n_labels in enumerate(schedule):
        if len(labelled) < n_labels:
            open_rows = np.flatnonzero(is_open)
            ens = last_ens
            rewards = ens.member_rewards(data.feat)
            lab = np.asarray(labelled)
            pool = make_pool(rewards, data.feat, data.ia[open_rows], data.ib[open_rows],
                             groups=np.asarray(data.group)[open_rows],
                             labelled=(data.ia[lab], data.ib[lab]), scale=ens.scale)
            strategy = select_strategy(strategy_name, len(labelled), cold_start)
            use = cold_rng if strategy.name == "random" else rng
            need = int(n_labels - len(labelled))
            # The retraining job's ordering function; the next batch is its first `need` pairs.
            priority, _ = queue_order(strategy, pool, need, use, n_batches=1)
            pick = open_rows[np.argsort(-priority, kind="stable")[:need]]
            labelled.extend(pick.tolist())
            is_open[pick] = False
        if k == 0 and (data.outcome[labelled] == BOTH_BAD).all():
            raise PrefloopError(f"the {len(labelled)} seed labels of seed {seed} are all both-bad, which train "
                                "nothing; raise --seed-labels (or give the simulator a file with more a/b/tie "
                                "winners)")
        # Sorted rows: the model depends on which pairs are labelled, not on the order they came in.
        last_ens, metrics = fit_and_evaluate(data.subset(np.sort(labelled)), test, config, seed=seed)
        accs.append(metrics.accuracy)
        losses.append(metrics.log_loss)
        if on_step is not None:
            on_step()
    return schedule, np.asarray(accs), np.asarray(losses)


def run_simulation(data, strategies: list[str], seeds, *, seed_labels: int = 32, batch: int = 32,
                   budget: int = 1000, cold_start: int | None = None, config=None,
                   repeats: int = REPEATS, first_stream: int = 0, progress: bool = True) -> list[Curves]:
    """Replay ``data`` for each strategy and seed; one ``Curves`` per strategy (same seeds, paired).

    Every seed follows one label schedule, ending at ``common_budget`` (the
    budget, or the smallest training pool over the seeds if that is smaller),
    so each column of the curves means the same label count for every seed.
    Each seed is replayed ``repeats`` times (random streams ``first_stream``,
    ``first_stream + 1``, …, shared by every strategy) and its curve is the mean
    of those replays.
    """
    from tqdm import tqdm

    seeds = list(seeds)
    budget = common_budget(data, seeds, budget)
    schedule = label_schedule(seed_labels, batch, budget, budget)
    if repeats < 1:
        raise PrefloopError("--repeats must be at least 1")
    bar = tqdm(total=len(strategies) * len(seeds) * repeats * len(schedule), disable=not progress, unit="retrain",
               desc="simulate", file=sys.stderr)
    out = []
    try:
        for name in strategies:
            t0 = time.perf_counter()
            rows, losses = [], []
            for s in seeds:
                accs, lls = [], []
                for r in range(repeats):
                    bar.set_postfix_str(f"{name} seed {s}" + (f" replay {r + 1}/{repeats}" if repeats > 1 else ""))
                    labels, acc, loss = simulate_seed(data, name, s, seed_labels=seed_labels, batch=batch,
                                                      budget=budget, cold_start=cold_start, config=config,
                                                      stream=first_stream + r, on_step=bar.update)
                    if not np.array_equal(labels, schedule):
                        raise RuntimeError(f"seed {s} of {name} followed the label counts {labels.tolist()}, "
                                           f"not the common schedule {schedule.tolist()}")
                    accs.append(acc)
                    lls.append(loss)
                rows.append(np.mean(accs, axis=0))
                losses.append(np.mean(lls, axis=0))
            out.append(Curves(name, schedule, np.stack(rows), np.stack(losses), time.perf_counter() - t0, repeats))
    finally:
        bar.close()
    return out


def common_budget(data, seeds, budget: int) -> int:
    """``budget``, or the smallest training pool over ``seeds`` if that is smaller.

    Each seed holds out different prompts, so the pools differ in size; a
    budget no seed's pool falls short of gives every seed the same schedule.
    """
    from rm.split import held_out_mask

    pools = [int((~held_out_mask(data.group, TEST_FRACTION, salt=f"simulate-{s}")).sum()) for s in seeds]
    if pools and min(pools) < 1:
        raise PrefloopError("the dataset is too small to hold out a test split by prompt; "
                            "give the simulator more prompts")
    return min([budget, *pools])


def check_splits(data, seeds) -> None:
    """Refuse (``PrefloopError``) a seed whose split by prompt leaves nothing to train on or to measure.

    The held-out side needs a pair with a winner (a or b): held-out accuracy leaves out
    ties and both-bad pairs, so without one every curve would be NaN.
    """
    from rm.data import A_WINS, B_WINS
    from rm.split import held_out_mask

    n_prompts = len(set(np.asarray(data.group).tolist()))
    decisive = np.isin(data.outcome, (A_WINS, B_WINS))
    more = (f"the file has {n_prompts} prompt{'s' if n_prompts != 1 else ''} and the split holds out about "
            f"{TEST_FRACTION:.0%} of them, so give the simulator more prompts")
    for s in seeds:
        test = held_out_mask(data.group, TEST_FRACTION, salt=f"simulate-{s}")
        if test.all():
            raise PrefloopError(f"seed {s} holds out every prompt and leaves none to train on: {more}")
        if not (test & decisive).any():
            raise PrefloopError(f"seed {s} holds out no pairs with a winner (a or b) to measure accuracy on: "
                                + (more if decisive.sum() > 1 else
                                   f"the file has {int(decisive.sum())} such pairs (ties and both-bad "
                                   "labels are not counted), so give the simulator a file with a/b winners"))


def check_schedule(schedule: np.ndarray, *, seed_labels: int, cold_start: int, pool: int, capped: bool) -> None:
    """Refuse a run in which no strategy ever picks a batch: every curve would be random's.

    The strategy orders the pool for the batch after ``n`` labels only once
    ``n >= cold_start``; the last batch is taken after ``schedule[-2]`` labels.
    """
    end = f"the smallest training pool ({pool} pairs)" if capped else f"the budget ({pool} labels)"
    if len(schedule) < 2:
        raise PrefloopError(f"--seed-labels ({seed_labels}) already cover {end}: no labels are left for a "
                            "strategy to choose; lower --seed-labels")
    if cold_start > schedule[-2]:
        raise PrefloopError(f"the cold start ({cold_start} labels, --cold-start or PREFLOOP_COLD_START) is past "
                            f"the last batch, taken after {int(schedule[-2])} labels on the way to {end}: every "
                            f"strategy would order at random and match random's curve; use --cold-start "
                            f"{int(schedule[-2])} or less" + ("" if capped else ", or raise --budget"))


# --------------------------------------------------------------------------- analysis


def area_under_curve(labels: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Mean accuracy over the label range (trapezoid area / range), per seed row."""
    labels = np.asarray(labels, dtype=np.float64)
    acc = np.atleast_2d(accuracy)
    if len(labels) < 2:
        return acc[:, 0].copy()
    dx = np.diff(labels)
    return ((acc[:, 1:] + acc[:, :-1]) * 0.5 * dx).sum(axis=1) / (labels[-1] - labels[0])


def labels_to_reach(labels: np.ndarray, curve: np.ndarray, target: float) -> float:
    """Fewest labels at which ``curve`` (linearly interpolated) first reaches ``target``; inf if never."""
    labels = np.asarray(labels, dtype=np.float64)
    curve = np.asarray(curve, dtype=np.float64)
    hit = np.flatnonzero(curve >= target)
    if not len(hit):
        return math.inf
    k = int(hit[0])
    if k == 0:
        return float(labels[0])
    x0, x1, y0, y1 = labels[k - 1], labels[k], curve[k - 1], curve[k]
    return float(x0 + (target - y0) / (y1 - y0) * (x1 - x0)) if y1 > y0 else float(x1)


@dataclass
class Comparison:
    """One strategy against the reference (random), paired by seed.

    ``reference_budget`` is B = min(``asked_budget``, ``curve_end``), the curves'
    last label count. ``needed``: labels the strategy's mean curve needs to reach
    the reference's mean accuracy at B; ``saving`` = 1 - needed / B, with a
    bootstrap interval over seeds (seeds resampled, both curves averaged over the
    same resample). A target not reached by ``curve_end`` labels is ``needed`` =
    inf (``null`` in curves.json; printed "> curve_end") and ``saving`` = -inf
    (printed "< 1 - curve_end / B"): the curves show only that more labels are
    needed, not how many. So is an interval end that falls on resamples which
    do not reach it. ``auc_gain`` in accuracy points, ``worst_gap`` = the lowest
    mean difference to the reference at any label count (points).
    """

    strategy: str
    reference: str
    reference_budget: float
    asked_budget: float
    target_accuracy: float
    needed: float
    needed_ci: tuple[float, float]
    saving: float
    saving_ci: tuple[float, float]
    auc_gain: float
    auc_gain_ci: tuple[float, float]
    auc_wins: int
    worst_gap: float
    worst_gap_at: int
    verdict: str = ""
    """One line on what to do with the result (see ``verdict``)."""
    savings_along: tuple = ()
    """``(b, saving)`` for b = B/4, B/2 and B (mean curves, no interval): where along the curve labels are saved."""
    curve_end: float = math.nan
    """The curves' last label count: a ``needed`` of inf means "more than this"."""


MIN_SEEDS_FOR_VERDICT = 5
"""Below this many seeds a bootstrap over seeds has too few distinct resamples to mean anything
(2 seeds give 3 distinct means), so no verdict is given."""


def verdict(auc_gain_ci: tuple[float, float], saving_ci: tuple[float, float], n_seeds: int) -> str:
    """What the intervals support: use the strategy, keep the reference, or run more seeds."""
    if n_seeds < MIN_SEEDS_FOR_VERDICT:
        return (f"none: {n_seeds} seed(s) are too few for the intervals to mean anything; "
                f"run at least {MIN_SEEDS_FOR_VERDICT} (10 recommended)")
    if auc_gain_ci[0] > 0 and saving_ci[0] > 0:
        return "saves labels on this data (both intervals exclude 0)"
    if auc_gain_ci[1] < 0:
        return "worse than the reference on this data: keep the reference"
    if auc_gain_ci[0] > 0:
        return ("better on average over the curve, but the label saving at the reference budget "
                "is not certain")
    return (f"not distinguishable from the reference with {n_seeds} seeds (the interval for the area "
            "includes 0): keep the reference, or run more seeds")


def flatness_note(reference: "Curves", budget: float) -> str | None:
    """A warning when the reference curve barely rises towards ``budget`` compared with seed noise.

    Then the crossing point behind "labels needed" moves a lot with small differences,
    and the area under the curve is the steadier measure.
    """
    labels = reference.labels.astype(np.float64)
    if len(labels) < 3 or budget <= labels[0]:
        return None
    mean = reference.accuracy.mean(axis=0)
    half = max(float(labels[0]), budget / 2)
    rise = float(np.interp(budget, labels, mean) - np.interp(half, labels, mean)) * 100
    k = int(np.argmin(np.abs(labels - budget)))
    sd = float(reference.accuracy[:, k].std()) * 100
    if rise >= sd:
        return None
    return (f"{reference.strategy}'s curve rises only {rise:+.2f} points from {half:.0f} to {budget:.0f} labels "
            f"while seeds differ by {sd:.2f} (s.d.): the labels-needed figure is imprecise here; "
            "trust the area under the curve more")


def compare(strategy: Curves, reference: Curves, reference_budget: float = REFERENCE_BUDGET,
            n_boot: int = 2000, seed: int = 0) -> Comparison:
    """Paired bootstrap comparison of ``strategy`` to ``reference`` (see ``Comparison``)."""
    labels = reference.labels
    if not np.array_equal(labels, strategy.labels) or reference.accuracy.shape != strategy.accuracy.shape:
        raise ValueError("curves must share label counts and seeds to be compared")
    budget = float(min(reference_budget, labels[-1]))
    a, r = strategy.accuracy, reference.accuracy
    n_seeds = len(a)

    def needed_for(rows, b=budget):
        target = float(np.interp(b, labels, r[rows].mean(axis=0)))
        return target, labels_to_reach(labels, a[rows].mean(axis=0), target)

    target, needed = needed_for(np.arange(n_seeds))
    boot = np.random.default_rng(seed)
    draws = boot.integers(0, n_seeds, size=(n_boot, n_seeds))
    need_b = np.array([needed_for(rows)[1] for rows in draws])  # inf: not reached by the curves' end
    gain = (area_under_curve(labels, a) - area_under_curve(labels, r)) * 100
    gain_b = gain[draws].mean(axis=1)
    lo_n, hi_n = _needed_percentiles(need_b, float(labels[-1]))
    diff = (a - r).mean(axis=0) * 100
    worst = int(np.argmin(diff))
    gain_ci = tuple(float(x) for x in np.percentile(gain_b, [2.5, 97.5]))
    saving_ci = (1.0 - float(hi_n) / budget, 1.0 - float(lo_n) / budget)
    along = [(float(b), 1.0 - needed_for(np.arange(n_seeds), b)[1] / b)
             for b in (budget / 4, budget / 2, budget) if b > labels[0]]
    return Comparison(
        strategy=strategy.strategy, reference=reference.strategy, reference_budget=budget,
        asked_budget=float(reference_budget),
        target_accuracy=target, needed=needed, needed_ci=(float(lo_n), float(hi_n)),
        saving=1.0 - needed / budget, saving_ci=saving_ci, auc_gain=float(gain.mean()), auc_gain_ci=gain_ci,
        auc_wins=int((gain > 0).sum()), worst_gap=float(diff[worst]), worst_gap_at=int(labels[worst]),
        verdict=verdict(gain_ci, saving_ci, n_seeds), savings_along=tuple(along), curve_end=float(labels[-1]))


def _needed_percentiles(need: np.ndarray, end: float, q=(2.5, 97.5)) -> tuple[float, ...]:
    """``np.percentile`` of bootstrap draws of labels needed, inf where the draws say only "more than ``end``".

    A draw of inf did not reach the target by the curves' last point (``end``
    labels). A percentile that falls on such draws (or between one and a
    reached draw) depends on a number the curves do not show, so it is inf;
    one between reached draws is the usual interpolated percentile.
    """
    reached = np.isfinite(need)
    # The same percentiles with the unreached draws put at two made-up places beyond the curves:
    # a percentile that moves with them rests on them.
    at = [np.percentile(np.where(reached, need, k * end), q) for k in (2.0, 3.0)]
    return tuple(float(x) if x == y else math.inf for x, y in zip(*at))


def _percent(x: float, digits: int) -> str:
    """``x`` (a fraction) as a percentage with ``digits`` decimals, never "-0"."""
    return f"{round(x * 100, digits) + 0.0:.{digits}f}%"


def _fmt_needed(x: float, end: float) -> str:
    """Labels needed, or "> ``end``" for a target the curves do not reach by their last point (``end`` labels)."""
    return f"{x:.0f}" if math.isfinite(x) else f"> {end:.0f}"


def _fmt_saving(saving: float, budget: float, end: float, digits: int = 1) -> str:
    """``saving`` = 1 - needed / ``budget`` as a percentage, read like ``_fmt_needed``: a target not reached by
    the curves' last point (``end`` labels; ``saving`` -inf) needs more than ``end`` labels, a saving below
    1 - ``end`` / ``budget`` (below 0% where the budget is the last point)."""
    if math.isfinite(saving):
        return _percent(saving, digits)
    bound = 1.0 - end / budget
    return f"< {_percent(bound, 0 if round(bound * 100, digits) == round(bound * 100) else digits)}"


def saving_text(c: Comparison, saving: float, digits: int = 1) -> str:
    """One of ``c``'s savings (its estimate, an interval end, a point along the curve) as the report writes
    it: ``"< 0%"`` for a target its curves do not reach (for scripts that print comparisons their own way)."""
    return _fmt_saving(saving, c.reference_budget, c.curve_end, digits)


def format_report(curves: list[Curves], comparisons: list[Comparison], labels_shown=None, notes=()) -> str:
    """The printed learning-curve table, areas and label savings (stable, copyable text); ``notes`` end it."""
    names = [c.strategy for c in curves]
    labels = curves[0].labels
    n_seeds = len(curves[0].accuracy)
    each = f" (each the mean of {curves[0].repeats} replays)" if curves[0].repeats > 1 else ""
    lines = [f"held-out accuracy, mean ± std over {n_seeds} seeds{each}"]
    head = f"{'labels':>7}" + "".join(f"  {n:>17}" for n in names)
    lines += [head, "-" * len(head)]
    for k, n in enumerate(labels):
        if labels_shown is not None and n not in labels_shown:
            continue
        row = f"{n:>7d}"
        for c in curves:
            row += f"  {c.accuracy[:, k].mean():>9.4f} ± {c.accuracy[:, k].std():.4f}"
        lines.append(row)
    lines += ["", f"area under the curve ({labels[0]}-{labels[-1]} labels; mean accuracy over the range)"]
    for c in curves:
        auc = area_under_curve(c.labels, c.accuracy)
        lines.append(f"  {c.strategy:>20}: {auc.mean():.4f} ± {auc.std():.4f}   ({c.seconds:.0f} s)")
    end = float(labels[-1])
    for cmp in comparisons:
        b = cmp.reference_budget
        lines += [
            "",
            f"{cmp.strategy} vs {cmp.reference}:",
            f"  AUC gain: {cmp.auc_gain:+.2f} points (95% CI {cmp.auc_gain_ci[0]:+.2f} to {cmp.auc_gain_ci[1]:+.2f}; "
            f"better on {cmp.auc_wins}/{n_seeds} seeds)",
            f"  labels needed to reach {cmp.reference}'s accuracy at {b:.0f} labels ({cmp.target_accuracy:.4f}): "
            f"{_fmt_needed(cmp.needed, end)} (95% CI {_fmt_needed(cmp.needed_ci[0], end)} to "
            f"{_fmt_needed(cmp.needed_ci[1], end)})",
            f"  labels saved: {_fmt_saving(cmp.saving, b, end)} (95% CI {_fmt_saving(cmp.saving_ci[0], b, end)} to "
            f"{_fmt_saving(cmp.saving_ci[1], b, end)})",
        ]
        if len(cmp.savings_along) > 1:
            lines.append(
                f"  labels saved along the curve (to reach {cmp.reference}'s accuracy at "
                + " / ".join(f"{b:.0f}" for b, _ in cmp.savings_along) + " labels): "
                + " / ".join(_fmt_saving(s, b, end, digits=0) for b, s in cmp.savings_along))
        lines += [
            f"  largest shortfall against {cmp.reference}: {cmp.worst_gap:+.2f} points at {cmp.worst_gap_at} labels",
            f"  verdict: {cmp.verdict}",
        ]
    if comparisons:
        first = comparisons[0]
        if first.asked_budget > first.reference_budget:
            lines += ["", f"note: the reference budget ({first.asked_budget:.0f} labels) is beyond the curves' "
                      f"last point, so labels needed and saved are measured at B = {first.reference_budget:.0f} "
                      "labels"]
        ref = next((c for c in curves if c.strategy == first.reference), None)
        note = flatness_note(ref, first.reference_budget) if ref is not None else None
        if note:
            lines += ["", f"note: {note}"]
        if any(not math.isfinite(x) for cmp in comparisons
               for x in (cmp.needed, *cmp.needed_ci, *(s for _, s in cmp.savings_along))):
            lines += ["", f"note: \"> {end:.0f}\" labels needed, and the saving \"< …\" beside it, mean that the mean "
                      f"curve (or, for an interval, the resamples at that end) had not reached the target by the "
                      f"curves' last point, {end:.0f} labels: how many more labels it would need is not measured; "
                      "raise --budget to see"]
    for note in notes:
        lines += ["", f"note: {note}"]
    return "\n".join(lines)


def curves_to_json(curves: list[Curves], comparisons: list[Comparison], meta: dict) -> dict:
    """A JSON-serialisable record of every curve (per seed) and comparison."""
    from dataclasses import asdict

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        return x

    return clean({
        "meta": meta,
        "strategies": {c.strategy: {
            "labels": c.labels.tolist(),
            "accuracy": c.accuracy.tolist(),
            "log_loss": c.log_loss.tolist(),
            "mean_accuracy": c.accuracy.mean(axis=0).tolist(),
            "std_accuracy": c.accuracy.std(axis=0).tolist(),
            "auc": area_under_curve(c.labels, c.accuracy).tolist(),
            "seconds": c.seconds,
        } for c in curves},
        "comparisons": [asdict(c) for c in comparisons],
    })


def plot_curves(curves: list[Curves], path: Path, comparisons: list[Comparison] = (), title: str = "") -> None:
    """Mean ± std learning curves as a PNG (matplotlib, Agg backend).

    A dashed line marks the reference's accuracy at the reference budget and a dotted
    line, in the strategy's colour, where each strategy's mean curve reaches it.
    ``title`` (the data file's name) heads the plot. The legend stands to the right
    of the axes, outside them, so it hides no curve or band whatever their shape
    (the image widens to hold it).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.5), dpi=120)  # wide enough for the legend beside the axes
    colour = {}
    for c in curves:
        m, s = c.accuracy.mean(axis=0), c.accuracy.std(axis=0)
        (line,) = ax.plot(c.labels, m, label=c.strategy, lw=1.8)
        colour[c.strategy] = line.get_color()
        ax.fill_between(c.labels, m - s, m + s, alpha=0.15)
    if comparisons:
        first = comparisons[0]
        ax.axhline(first.target_accuracy, color="grey", lw=0.8, ls="--",
                   label=f"{first.reference} at {first.reference_budget:.0f} labels")
    for cmp in comparisons:
        if math.isfinite(cmp.needed):
            ax.axvline(cmp.needed, color=colour.get(cmp.strategy, "grey"), lw=0.8, ls=":",
                       label=f"{cmp.strategy} reaches it")
    ax.set_xlabel("labels")
    ax.set_ylabel("held-out accuracy (mean ± std over seeds)")
    reps = curves[0].repeats
    ax.set_title(f"{title + ': ' if title else ''}{len(curves[0].accuracy)} seeds"
                 + (f", each the mean of {reps} replays" if reps > 1 else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=9, frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png", bbox_inches="tight")
    plt.close(fig)


# --------------------------------------------------------------------------- command line


@dataclass
class Report:
    """What ``simulate_file`` produced: the printed text, curves, comparisons and output files."""

    text: str
    curves: list[Curves]
    comparisons: list[Comparison]
    json_path: Path
    png_path: Path


def check_options(*, seeds, seed_labels: int, batch: int, budget: int, reference_budget: float,
                  cold_start: int | None, repeats: int) -> None:
    """Refuse (``PrefloopError``, naming the option) numbers no run can use, before any work is done."""
    if not seeds:
        raise PrefloopError("--seeds must be at least 1")
    if min(seeds) < 0:
        raise PrefloopError(f"--first-seed must be 0 or more, not {min(seeds)}")
    for option, value in (("--seed-labels", seed_labels), ("--batch", batch), ("--repeats", repeats)):
        if value < 1:
            raise PrefloopError(f"{option} must be at least 1, not {value}")
    if budget < seed_labels:
        raise PrefloopError(f"--budget ({budget}) must be at least --seed-labels ({seed_labels})")
    if not (math.isfinite(reference_budget) and reference_budget >= seed_labels):
        raise PrefloopError(f"--reference-budget must be a number of labels at least --seed-labels "
                            f"({seed_labels}), not {reference_budget:g}")
    if cold_start is not None and cold_start < 0:
        raise PrefloopError(f"--cold-start must be 0 or more, not {cold_start}")


def prepare_out(out: str | Path) -> Path:
    """Create the output folder and make sure files can be written there, before the (long) run.

    The folder itself is created if need be, but not the folders above it: a
    parent that does not exist is refused, as ``prefloop export`` and
    ``prefloop score`` refuse an ``--out`` in a missing folder (a mistyped path
    then says so instead of growing a tree of folders).
    """
    import tempfile

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PrefloopError(f"cannot write curves.json and curves.png to {out}: it is a file, not a folder; "
                            "choose another --out")
    parent = out.absolute().parent
    if not out.exists() and not parent.is_dir():
        what = ("is a file, not a folder; choose another --out" if parent.exists()
                else "does not exist: create it or choose another --out")
        raise PrefloopError(f"cannot write curves.json and curves.png to {out}: folder {str(out.parent)!r} {what}")
    try:
        out.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".curves-", suffix=".probe"):
            pass
    except OSError as exc:
        raise PrefloopError(f"cannot write curves.json and curves.png to {out} "
                            f"({exc.strerror or exc}); choose another --out") from None
    return out


def write_outputs(out: Path, doc: dict, curves: list[Curves], comparisons: list[Comparison],
                  title: str = "") -> tuple[Path, Path]:
    """Write ``curves.json`` and ``curves.png`` whole or not at all.

    Both go to temporary files first and are then renamed into place, so an
    interrupt (Ctrl-C) or a failure leaves the earlier pair, if any, as it was,
    never half a JSON file or a JSON file from one run beside the plot of another.
    """
    import os

    json_path, png_path = out / "curves.json", out / "curves.png"
    # Plain open() (not mkstemp's private 0600 files): the outputs get the usual permissions.
    tmp_png, tmp_json = (out / f".{p.name}.{os.getpid()}.tmp" for p in (png_path, json_path))
    try:
        plot_curves(curves, tmp_png, comparisons, title=title)
        tmp_json.write_text(json.dumps(doc, indent=1))
        os.replace(tmp_png, png_path)
        os.replace(tmp_json, json_path)
    finally:
        for tmp in (tmp_png, tmp_json):
            tmp.unlink(missing_ok=True)
    return json_path, png_path


def _sha256(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def simulate_file(data_path: str | Path, strategies: list[str], seeds, *, embedder, out: str | Path,
                  seed_labels: int = 32, batch: int = 32, budget: int = 1000,
                  reference_budget: float = REFERENCE_BUDGET, cold_start: int | None = None,
                  repeats: int = REPEATS, progress: bool = True, echo=print) -> Report:
    """Load ``data_path``, replay every strategy over ``seeds``, write ``curves.json``/``curves.png`` to ``out``.

    ``random`` is always included (it is the reference). ``echo`` receives
    progress lines (``print`` on the command line). Options, the output folder,
    the split of every seed and the label schedule are checked before the run;
    what cannot work raises ``PrefloopError`` with a message naming the fix.
    """
    from rm.acquisition import DEFAULT_STRATEGY, get_strategy

    strategies = [str(name).strip().lower() for name in (strategies or ["random", "default"])]
    for name in strategies:
        try:
            get_strategy(name)
        except ValueError as exc:
            raise PrefloopError(str(exc)) from None
    if "random" not in strategies:
        strategies.insert(0, "random")
    strategies = list(dict.fromkeys(strategies))
    seeds = list(seeds)
    check_options(seeds=seeds, seed_labels=seed_labels, batch=batch, budget=budget,
                  reference_budget=reference_budget, cold_start=cold_start, repeats=repeats)
    out = prepare_out(out)

    t0 = time.perf_counter()
    dataset = load_dataset(data_path, embedder=embedder)
    for note in dataset.notes:
        echo(f"note: {note}")
    echo(f"{len(dataset.pairs)} labelled pairs from {data_path}; embedded "
         f"{getattr(embedder, 'n_computed', 0)} new texts in {time.perf_counter() - t0:.0f} s")
    check_splits(dataset.pairs, seeds)
    used = common_budget(dataset.pairs, seeds, budget)
    cold = seed_labels if cold_start is None else cold_start
    check_schedule(label_schedule(seed_labels, batch, used, used), seed_labels=seed_labels, cold_start=cold,
                   pool=used, capped=used < budget)
    report_notes = []
    if used < budget:
        report_notes.append(f"the budget of {budget} labels was capped at {used}: the smallest training pool "
                            f"over these seeds (the pairs of prompts not held out) has {used} pairs, so every "
                            f"curve ends there")
    if strategies == ["random"]:
        report_notes.append("only random was run, so there is nothing to compare it with: add --strategy default "
                            "(or another strategy) to see whether choosing pairs saves labels on this file")
    capped = f" (capped from {budget}: see the note at the end)" if used < budget else ""
    echo(f"strategies: {', '.join(f'{s} (= {DEFAULT_STRATEGY})' if s == 'default' else s for s in strategies)}; "
         f"seeds {seeds[0]}-{seeds[-1]}, {repeats} replay{'s' if repeats != 1 else ''} each; "
         f"{seed_labels} seed labels, batches of {batch}, budget {used}{capped}, "
         f"random order until {max(seed_labels, cold_start or 0)} labels (cold start)")
    curves = run_simulation(dataset.pairs, strategies, seeds, seed_labels=seed_labels, batch=batch,
                            budget=budget, cold_start=cold_start, repeats=repeats, progress=progress)
    ref = curves[strategies.index("random")]
    comparisons = [compare(c, ref, reference_budget) for c in curves if c.strategy != "random"]
    text = format_report(curves, comparisons, notes=report_notes)
    meta = {"data": str(data_path), "data_path": str(Path(data_path).resolve()),
            "data_sha256": _sha256(data_path), "pairs": len(dataset.pairs), "notes": dataset.notes,
            "strategies": strategies,
            "strategy_rules": {s: get_strategy(s).name for s in strategies},
            "seeds": seeds, "repeats": repeats,
            "seed_labels": seed_labels, "batch": batch, "budget": budget, "budget_used": used,
            "budget_capped": used < budget, "cold_start": cold,
            "default_strategy": DEFAULT_STRATEGY, "reference_budget": reference_budget,
            "test_fraction": TEST_FRACTION, "seconds": round(time.perf_counter() - t0, 1)}
    json_path, png_path = write_outputs(out, curves_to_json(curves, comparisons, meta), curves, comparisons,
                                        title=Path(data_path).name)
    return Report(text, curves, comparisons, json_path, png_path)


def main(args) -> int:
    """``prefloop simulate``: replay, print the report, write ``curves.json`` and ``curves.png``.

    Ctrl-C stops the run with exit status 130 and a line saying that nothing was
    written (``curves.json``/``curves.png`` from an earlier run stay as they were).
    """
    from annotate.settings import load_settings

    settings = load_settings()
    t0 = time.perf_counter()
    cache_dir = Path(getattr(args, "cache_dir", None) or settings.cache_dir)
    first = int(getattr(args, "first_seed", 0) or 0)
    n_seeds = int(args.seeds)
    reference_budget = getattr(args, "reference_budget", None)
    repeats = getattr(args, "repeats", None)
    cold_start = getattr(args, "cold_start", None)
    if n_seeds < 1:
        raise PrefloopError(f"--seeds must be at least 1, not {n_seeds}")
    embedder = make_embedder(cache_dir, settings.resolved_encoder_path, settings.torch_threads)
    try:
        report = simulate_file(
            args.data, args.strategy, range(first, first + n_seeds), embedder=embedder, out=args.out,
            seed_labels=int(args.seed_labels), batch=int(args.batch), budget=int(args.budget),
            reference_budget=float(REFERENCE_BUDGET if reference_budget is None else reference_budget),
            cold_start=settings.cold_start if cold_start is None else cold_start,
            repeats=REPEATS if repeats is None else int(repeats))
    except KeyboardInterrupt:
        print(f"\ninterrupted after {time.perf_counter() - t0:.0f} s: nothing was written to {args.out} "
              "(curves.json and curves.png from an earlier run, if any, are as they were)", file=sys.stderr)
        return 130
    print()
    print(report.text)
    print(f"\nwrote {report.json_path} and {report.png_path} ({time.perf_counter() - t0:.0f} s in all)")
    return 0


def build_parser():
    """Stand-alone parser (``python -m annotate.simulate``) with every option of ``prefloop simulate``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m annotate.simulate", description=__doc__.splitlines()[0])
    add_arguments(p)
    return p


if __name__ == "__main__":  # pragma: no cover
    try:
        sys.exit(main(build_parser().parse_args()))
    except PrefloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
