"""The retraining job: the one bridge from SQL rows to the ``rm`` library.

One run, under a cross-process lock (:mod:`annotate.locks`), goes through
these steps, each recorded in ``training_runs.step`` with its wall time:

1. ``snapshot``: one short read of the labels (active, non-probe judgments),
   the open comparisons and their texts.
2. ``embed``: features of the responses in labelled pairs, through the
   on-disk embedding cache (each text is embedded once, ever).
3. ``train``: an ensemble of Bradley–Terry heads, outside any transaction.
4. ``evaluate``: held-out human labels (a deterministic split by prompt); the
   active model is re-scored on the same held-out pairs and the promotion gate
   decides.
5. ``save``: the artifact, written to a temporary path and renamed by ``rm``.
6. ``score``: every open comparison with the model that will be active: each
   response scored once (features read from the cache, and new texts embedded,
   chunk by chunk so memory stays bounded), pairs combined by index,
   acquisition priorities. The time spent getting the open responses' features
   (embedding new texts, reading the cache) is recorded as ``embed_pool``, not
   in ``score``.
7. ``promote``: one short transaction records the model version, promotes it
   (or not), writes all priorities in bulk and closes the run.

Because the version, the promotion, the priorities and the run's final status
commit together, a crash or kill at any step leaves the previous active model
and the priorities exactly as they were; the next run marks the dead run
``failed`` ("process died at step X").

For tests, ``PREFLOOP_RETRAIN_CRASH_AT=<step>`` kills this process with
SIGKILL at that step (for ``promote``: inside the open transaction, after all
writes and before the commit).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import bindparam, false, func, or_, select, text, union, update

from annotate import campaign, locks
from annotate.scoring import artifact_elsewhere, artifact_location
from annotate.db import Database, open_database
from annotate.errors import PrefloopError
from annotate.ingest import counted
from annotate.models import (
    Choice,
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentState,
    ModelVersion,
    Prompt,
    Response,
    TrainingRun,
    retired_comparison_ids,
    utcnow,
)
from annotate.settings import Settings

log = logging.getLogger("prefloop.retrain")

STEPS = ("snapshot", "embed", "train", "evaluate", "save", "score", "promote")
CRASH_ENV = "PREFLOOP_RETRAIN_CRASH_AT"
LOCK_NAME = "retrain"
TEST_FRACTION = 0.3
"""Share of prompts held out for evaluation (by a stable hash of the prompt)."""
FINISHED = ("succeeded", "rejected", "skipped")
_WRITE_CHUNK = 50_000
SCORE_CHUNK = 50_000
"""Responses featurised and scored at a time, so memory stays bounded with millions of open pairs."""
ACQ_BATCHES = 8
"""Batches the acquisition strategy composes (the rest of the queue follows by score)."""
ACQ_CANDIDATES = 2048
"""Pairs (best by strategy score) handed to batch selection with their features."""
ACQ_LABELLED = 2048
"""Most recent labelled pairs given to strategies as already covered."""
LOCK_BUSY = "another retrain is running"
"""``run_once``'s message when another process holds the retrain lock (nothing is recorded)."""
MIN_HELD_OUT_PAIRS = 30
"""Decisive held-out pairs below which the promotion gate does not compare accuracies (too noisy): the
model trained on more labels is promoted instead (:func:`promotion_decision`)."""


class Stopped(PrefloopError):
    """The run was asked to stop (SIGTERM/SIGINT to the watcher) between two steps."""


STOPPED = "stopped"
"""Key set (true) in the counts of a run that was stopped on purpose (:class:`Stopped`, or Ctrl-C:
``KeyboardInterrupt``). Its status is ``failed``, as for any run that did not finish, but the
watcher's wait after failed runs does not count it (:func:`_failures_in_a_row`)."""


@dataclass
class RetrainResult:
    """What one ``run_once`` did. ``status`` is succeeded, rejected, skipped or failed."""

    status: str
    message: str = ""
    run_id: int | None = None
    model_version_id: int | None = None
    promoted: bool = False
    metrics: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One human-readable paragraph for the CLI and the watcher's log."""
        head = f"retrain {self.status}" + (f" (run {self.run_id})" if self.run_id else "")
        lines = [f"{head}: {self.message}" if self.message else head]
        new = self.metrics.get("new") or {}
        if new:
            # Judgments (rows, both-bad included), those with a winner, and the pairs those are on: the
            # gate's "on the same N pairs" counts the last.
            figures = [f"{k}={_fmt(new.get(k))}" for k in ("accuracy", "log_loss", "ece", "length_baseline_accuracy",
                                                           "reward_length_spearman", "n_judgments", "n_decisive")]
            if self.metrics.get("n_held_out_decisive") is not None:
                figures.append(f"n_decisive_pairs={self.metrics['n_held_out_decisive']}")
            lines.append("held-out: " + ", ".join(figures))
        if self.counts:
            lines.append("counts: " + ", ".join(f"{k}={v}" for k, v in self.counts.items()))
        if self.timings:
            lines.append("timings (s): " + ", ".join(f"{k}={v:.2f}" for k, v in self.timings.items()))
        return "\n".join(lines)


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


GATE_CONFIDENCE = Settings.promote_confidence
"""The default one-sided confidence (``PREFLOOP_PROMOTE_CONFIDENCE``) at which the paired held-out evidence
must say a candidate is worse than the active model by more than the tolerance before the gate rejects it
(:func:`promotion_decision`). At 0.5 that is "its measured accuracy is worse by more than the tolerance":
``bench/retrain_gate.py`` found that rule keeps better models and stops more regressions than 0.8 or 0.95,
at the cost of rejecting about half the candidates that were not worse."""


@dataclass(frozen=True)
class PairedComparison:
    """Two models on the same decisive held-out comparisons, clustered by comparison.

    Per comparison ``i`` with ``v_i`` decisive votes, ``d_i`` = the votes the new model
    gets right minus those the active model gets right (0 where both pick the same side;
    an exact tie in reward counts one half, as in ``rm.evaluate``'s accuracy).
    """

    n_pairs: int
    """Decisive held-out comparisons."""
    n_votes: float
    """Decisive judgments on them (``N``: accuracy is per judgment)."""
    new_only: int
    """Comparisons where the new model gets more of the votes right (``d_i > 0``)."""
    active_only: int
    """Comparisons where the active model does (``d_i < 0``)."""
    diff: float
    """``Σ d_i``: new minus active correct votes, ``N`` times the accuracy difference."""
    sum_sq: float
    """``Σ d_i²``."""
    sum_dv: float
    """``Σ d_i v_i``."""
    sum_v_sq: float
    """``Σ v_i²``."""

    def z(self, tolerance: float) -> float:
        """Score statistic for "the new model is worse by exactly ``tolerance``": ``(Σ d_i + tN) /
        sqrt(Σ (d_i + t v_i)²)``, the variance estimated at that null, clusters independent. At ``t = 0``
        it is McNemar's test (``(n10 - n01) / sqrt(n10 + n01)`` with one vote per pair)."""
        num = self.diff + tolerance * self.n_votes
        var = self.sum_sq + 2 * tolerance * self.sum_dv + tolerance ** 2 * self.sum_v_sq
        if var <= 0:
            return 0.0 if num == 0 else math.copysign(math.inf, num)
        return num / math.sqrt(var)

    def p_worse(self, tolerance: float) -> float:
        """One-sided p-value (normal approximation) of the hypothesis that the new model is not worse
        than the active one by more than ``tolerance``: small means it is."""
        return 0.5 * math.erfc(-self.z(tolerance) / math.sqrt(2))

    def to_dict(self, tolerance: float) -> dict:
        return {"n_pairs": self.n_pairs, "n_votes": self.n_votes, "new_only": self.new_only,
                "active_only": self.active_only, "diff_votes": self.diff, "tolerance": tolerance,
                "z": _finite(self.z(tolerance)), "p_worse": self.p_worse(tolerance)}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def paired_comparison(new_correct, active_correct, comparison) -> PairedComparison:
    """:class:`PairedComparison` from per-judgment correctness of the two models on the same judgments
    (``rm.evaluate.vote_correctness``: 1, 0.5, 0; NaN for judgments that are not decisive) and each
    judgment's comparison id."""
    new_c, act_c = np.asarray(new_correct, dtype=np.float64), np.asarray(active_correct, dtype=np.float64)
    keep = ~(np.isnan(new_c) | np.isnan(act_c))
    _, cluster = np.unique(np.asarray(comparison)[keep], return_inverse=True)
    d = np.bincount(cluster, weights=new_c[keep] - act_c[keep])
    v = np.bincount(cluster).astype(np.float64)
    return PairedComparison(n_pairs=int(len(v)), n_votes=float(v.sum()), new_only=int((d > 0).sum()),
                            active_only=int((d < 0).sum()), diff=float(d.sum()), sum_sq=float(d @ d),
                            sum_dv=float(d @ v), sum_v_sq=float(v @ v))


def promotion_decision(new_accuracy: float | None, active_accuracy: float | None, tolerance: float,
                       *, has_active: bool, active_loadable: bool = True, n_held_out: int | None = None,
                       new_n_train: int | None = None, active_n_train: int | None = None,
                       paired: PairedComparison | None = None,
                       confidence: float = GATE_CONFIDENCE) -> tuple[bool, str]:
    """The promotion gate: ``(promote, reason)``.

    The first model is always promoted, and so is any model replacing an
    active one whose artifact cannot be loaded (it can score nothing: neither
    the queue nor ``prefloop score``; nor can one whose encoder is gone). With
    fewer than :data:`MIN_HELD_OUT_PAIRS` decisive held-out pairs (``n_held_out``,
    when given: comparisons, however many judgments each has) accuracy cannot
    tell the models apart, so the model trained on more
    labels wins (the new one on a tie). A new model without held-out labels is
    not promoted over an existing one.

    Otherwise, with ``paired`` (both models on the same held-out judgments, as
    the job has them), the new model is promoted unless the paired evidence
    says, at one-sided ``confidence`` (``PREFLOOP_PROMOTE_CONFIDENCE``, default
    :data:`GATE_CONFIDENCE`), that its accuracy is worse than the active
    model's by more than ``tolerance`` (:meth:`PairedComparison.p_worse` below
    ``1 - confidence``). At 0.5 that is the accuracies' rule below, with the
    paired counts in the reason; above it the gate allows for each gate's
    several points of sampling noise (``bench/retrain_gate.py``). Without
    ``paired`` the accuracies alone decide: promoted unless worse by more than
    ``tolerance``.
    """
    if not has_active:
        return True, "first model"
    if not active_loadable:
        return True, "the active model cannot be loaded (its artifact or its encoder), so it cannot score anything"
    if n_held_out is not None and n_held_out < MIN_HELD_OUT_PAIRS:
        few = (f"only {n_held_out} decisive held-out pairs (fewer than {MIN_HELD_OUT_PAIRS}), "
               "too few to compare accuracies")
        if new_n_train is None or active_n_train is None or new_n_train >= active_n_train:
            if new_n_train == active_n_train:
                return True, (f"{few}: promoted the new model, trained on as many labels as the active one "
                              f"({new_n_train})")
            return True, f"{few}: promoted the model trained on more labels ({new_n_train} vs active {active_n_train})"
        return False, f"{few}: kept the model trained on more labels (active {active_n_train} vs new {new_n_train})"
    if new_accuracy is None or math.isnan(new_accuracy):
        return False, "no held-out labels to compare with the active model"
    if active_accuracy is None or math.isnan(active_accuracy):
        return True, "the active model has no comparable held-out accuracy"
    if paired is not None:
        return _paired_decision(new_accuracy, active_accuracy, tolerance, paired, 1 - confidence)
    if new_accuracy >= active_accuracy - tolerance:
        return True, f"held-out accuracy {new_accuracy:.4f} vs active {active_accuracy:.4f} (tolerance {tolerance})"
    return False, (f"held-out accuracy {new_accuracy:.4f} is worse than the active model's "
                   f"{active_accuracy:.4f} by more than {tolerance}")


def _paired_decision(new_accuracy: float, active_accuracy: float, tolerance: float,
                     paired: PairedComparison, alpha: float) -> tuple[bool, str]:
    p = paired.p_worse(tolerance)
    detail = (f"the new model alone right on {paired.new_only} pairs, the active model alone on "
              f"{paired.active_only}; " + (f"p={p:.3f}" if p >= 0.001 else "p<0.001"))
    pairs = f"on the same {paired.n_pairs} pairs"
    # At alpha 0.5 the test is the accuracies' own rule: "beyond noise" would claim what it does not test.
    noise = " beyond noise" if alpha < 0.5 else ""
    if p < alpha:
        return False, (f"held-out accuracy {new_accuracy:.4f} is worse than the active model's "
                       f"{active_accuracy:.4f} {pairs} by more than the {tolerance} tolerance{noise and ','}{noise} "
                       f"({detail}, below {alpha:.2g})")
    verdict = ("not worse" if new_accuracy >= active_accuracy
               else f"not worse by more than the {tolerance} tolerance{noise}")
    return True, (f"held-out accuracy {new_accuracy:.4f} vs active {active_accuracy:.4f} {pairs}: {verdict} "
                  f"({detail}, rejected only below {alpha:.2g})")


# --------------------------------------------------------------------------- snapshot


@dataclass
class Snapshot:
    """Everything a run needs from the database, read in one short transaction.

    Responses are rows ``0..R-1``; pairs refer to them by row index.
    """

    max_judgment_id: int
    judgments_seen: int
    """Non-probe judgment rows (any state) the snapshot saw: see :func:`new_judgments`."""
    max_comparison_id: int
    """Comparisons above this id were created after the snapshot: no run has scored them yet."""
    n_judgments: int
    resp_ids: np.ndarray           # (R,) response ids, sorted
    resp_prompt_text: list[str]    # (R,) rendered prompt of each response
    resp_text: list[str]           # (R,)
    lab_ia: np.ndarray             # labelled pairs (one per judgment)
    lab_ib: np.ndarray
    lab_outcome: np.ndarray
    lab_strength: np.ndarray
    lab_group: np.ndarray          # prompt content hash per judgment
    lab_comparison: np.ndarray     # comparison id per judgment (several judgments can share one)
    open_ids: np.ndarray           # open comparisons
    open_ia: np.ndarray
    open_ib: np.ndarray
    open_group: np.ndarray         # prompt id per open comparison
    open_held_out: np.ndarray      # whether each open comparison's prompt is on the held-out side
    options: campaign.CampaignOptions
    active: dict | None            # id, artifact_path, encoder_id, metrics, n_train of the active version


def _label_filter():
    """The judgments that train: active, not probes, and not on a pair an admin retired."""
    return (Judgment.state == JudgmentState.active, Judgment.is_probe.is_(False),
            Judgment.comparison_id.not_in(retired_comparison_ids()))


def judgment_marks(session) -> tuple[int, int]:
    """``(largest id, rows)`` of the non-probe judgments (any state) a snapshot sees: :func:`new_judgments`."""
    max_id, seen = session.execute(select(func.max(Judgment.id), func.count(Judgment.id))
                                   .where(Judgment.is_probe.is_(False))).one()
    return int(max_id or 0), int(seen or 0)


def take_snapshot(session, settings: Settings) -> Snapshot:
    """Read labels, open comparisons and texts (call inside one read transaction)."""
    from rm.data import outcome_code
    from rm.features import render_prompt
    from rm.split import held_out_mask

    if session.bind.dialect.name == "postgresql":
        # Every statement below must see the same moment.
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    options = campaign.get_options(session, settings)
    active = session.execute(select(ModelVersion.id, ModelVersion.artifact_path, ModelVersion.encoder_id,
                                    ModelVersion.metrics, ModelVersion.n_train,
                                    TrainingRun.host.label("trained_on"))
                             .outerjoin(TrainingRun, TrainingRun.id == ModelVersion.training_run_id)
                             .where(ModelVersion.is_active)).first()
    max_id, seen = judgment_marks(session)
    max_comparison = session.scalar(select(func.max(Comparison.id))) or 0
    labels = session.execute(
        select(Judgment.choice, Judgment.strength, Comparison.response_a_id, Comparison.response_b_id,
               Prompt.content_hash, Judgment.comparison_id)
        .join(Comparison, Comparison.id == Judgment.comparison_id)
        .join(Prompt, Prompt.id == Comparison.prompt_id)
        .where(*_label_filter())
        .order_by(Judgment.id)).all()
    opened = session.execute(
        select(Comparison.id, Comparison.response_a_id, Comparison.response_b_id, Comparison.prompt_id)
        .where(Comparison.status == ComparisonStatus.open)
        .order_by(Comparison.id)).all()
    # Plain tuples: numpy probes Row objects for array attributes, which is slow.
    lab = np.array([(r[2], r[3]) for r in labels], dtype=np.int64).reshape(-1, 2)
    opn = np.array([tuple(r) for r in opened], dtype=np.int64).reshape(-1, 4)
    # The texts are selected by subqueries, not by long IN lists of ids (slow to bind and plan).
    is_open = Comparison.status == ComparisonStatus.open
    judged = select(Judgment.comparison_id).where(*_label_filter())
    involved = Comparison.id.in_(judged) | is_open
    needed = union(select(Comparison.response_a_id).where(involved),
                   select(Comparison.response_b_id).where(involved)).subquery()
    resp = session.execute(select(Response.id, Response.prompt_id, Response.text)
                           .where(Response.id.in_(select(needed.c[0]))).order_by(Response.id)).all()
    rendered: dict[int, str] = {}
    for pid, ptext, messages in session.execute(
            select(Prompt.id, Prompt.text, Prompt.messages)
            .where(Prompt.id.in_(select(Comparison.prompt_id).where(involved)))):
        rendered[pid] = render_prompt(ptext if ptext is not None else messages)  # text: as one user turn
    resp_ids = np.fromiter((r[0] for r in resp), dtype=np.int64, count=len(resp))
    # The side of each open pair's prompt, decided once per prompt (not per pair) by its content hash.
    open_prompts = session.execute(select(Prompt.id, Prompt.content_hash).where(
        Prompt.id.in_(select(Comparison.prompt_id).where(is_open))).order_by(Prompt.id)).all()
    prompt_ids = np.fromiter((r[0] for r in open_prompts), dtype=np.int64, count=len(open_prompts))
    prompt_held = held_out_mask([r[1] for r in open_prompts], TEST_FRACTION)
    return Snapshot(
        max_judgment_id=max_id,
        judgments_seen=seen,
        max_comparison_id=int(max_comparison),
        n_judgments=len(labels),
        resp_ids=resp_ids,
        resp_prompt_text=[rendered[r[1]] for r in resp],
        resp_text=[r[2] for r in resp],
        lab_ia=np.searchsorted(resp_ids, lab[:, 0]),
        lab_ib=np.searchsorted(resp_ids, lab[:, 1]),
        lab_outcome=np.array([outcome_code(r[0].value) for r in labels], dtype=np.int8),
        lab_strength=np.array([r[1] or 0 for r in labels], dtype=np.int8),
        lab_group=np.array([r[4] for r in labels], dtype=object),
        lab_comparison=np.fromiter((r[5] for r in labels), dtype=np.int64, count=len(labels)),
        open_ids=opn[:, 0],
        open_ia=np.searchsorted(resp_ids, opn[:, 1]),
        open_ib=np.searchsorted(resp_ids, opn[:, 2]),
        open_group=opn[:, 3],
        open_held_out=prompt_held[np.searchsorted(prompt_ids, opn[:, 3])] if len(opn) else np.zeros(0, bool),
        options=options,
        active=dict(active._mapping) if active is not None else None,
    )



# --------------------------------------------------------------------------- helpers


_ENCODERS: dict[tuple[str, int], object] = {}


def get_encoder(settings: Settings):
    """The configured encoder, built once per process (the model itself loads on first use)."""
    from rm.encoder import Encoder

    key = (settings.resolved_encoder_path, settings.torch_threads)
    if key not in _ENCODERS:
        _ENCODERS[key] = Encoder(settings.resolved_encoder_path or None, num_threads=settings.torch_threads)
    return _ENCODERS[key]


def _clean(obj):
    """JSON-safe copy: NaN/inf become None, numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _take(items: list, rows: np.ndarray) -> list:
    return [items[i] for i in rows.tolist()]


def score_responses(ensemble, rows: np.ndarray, featurize, *, known=None, chunk: int = SCORE_CHUNK) -> np.ndarray:
    """Member rewards ``(M, len(rows))`` for response rows, each scored once, in bounded memory.

    ``featurize(rows)`` gives feature rows (from the embedding cache) and is
    called per chunk; ``known=(known_rows, known_feat)`` supplies rows already in memory.
    """
    rewards = np.empty((ensemble.n_members, len(rows)), dtype=np.float32)
    done = np.zeros(len(rows), dtype=bool)
    if known is not None and len(rows):
        known_rows, known_feat = known
        sel = np.flatnonzero(np.isin(rows, known_rows))
        for s in range(0, len(sel), chunk):
            part = sel[s:s + chunk]
            rewards[:, part] = ensemble.member_rewards(known_feat[np.searchsorted(known_rows, rows[part])])
        done[sel] = True
    rest = np.flatnonzero(~done)
    for s in range(0, len(rest), chunk):
        part = rest[s:s + chunk]
        rewards[:, part] = ensemble.member_rewards(featurize(rows[part]))
    return rewards


def _crash_point(step: str) -> None:
    """Tests: ``PREFLOOP_RETRAIN_CRASH_AT=STEP`` kills the process (SIGKILL) as ``STEP`` begins;
    ``STEP:SIGTERM`` (any signal's name) sends it that signal instead."""
    at, _, name = os.environ.get(CRASH_ENV, "").partition(":")
    if at == step:
        os.kill(os.getpid(), getattr(signal, name or "SIGKILL"))


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[threading.Event]:
    """Within: SIGTERM or SIGINT (Ctrl-C) sets ``stop``, which a run checks between its steps; a second
    signal does what that signal does by default (a second Ctrl-C stops at once: the run is marked
    stopped all the same; a second SIGTERM kills, and the next run marks it dead). Outside the main thread,
    where Python cannot install handlers, nothing is installed."""
    installed = {}

    def _on_signal(signum, _frame):
        log.info("signal %s: stopping", signum)
        stop.set()
        for sig, handler in installed.items():  # the next one is not caught
            signal.signal(sig, handler)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            installed[sig] = signal.signal(sig, _on_signal)
    try:
        yield stop
    finally:
        for sig, handler in installed.items():
            signal.signal(sig, handler)


class _RowFeatures:
    """Response features looked up on demand (``rows[idx]`` → ``features_of(idx)``) for lazy pair features."""

    def __init__(self, n_rows: int, dim: int, features_of):
        self.shape = (n_rows, dim)
        self._features_of = features_of

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.asarray(idx)
        uniq, inverse = np.unique(idx, return_inverse=True)
        return np.asarray(self._features_of(uniq), dtype=np.float32)[inverse]


HELD_OUT_STRATEGY = "random (held-out)"
"""The provenance of a pair served for evaluation: held-out prompts' pairs are queued in random order."""


def _priorities(probs: np.ndarray, *, ia: np.ndarray, ib: np.ndarray, groups: np.ndarray,
                labelled: tuple | None, features_of, n_rows: int, dim: int, options,
                rng: np.random.Generator, held_out: np.ndarray | None = None,
                labelled_held_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str | np.ndarray]:
    """Acquisition ``(priority, score, strategy name)`` for the open pairs ``(ia, ib)``.

    ``features_of(rows)`` returns standardised features ``f / scale`` of response
    rows (``n_rows`` of them, ``dim`` wide); pair features are ``f_a - f_b``,
    built only for the pairs a strategy looks at. The order comes from
    ``rm.acquisition.queue_order``, the function the simulator uses too.
    Priorities are in (0, 1], distinct, higher first. Without ``rm.acquisition``:
    margin uncertainty (score = -|mean P - 0.5|).

    ``held_out`` marks the open pairs whose prompt is on the held-out side. Their labels only
    measure models, so the strategy orders the training side alone and the held-out pairs are
    queued in random order, interleaved at their share of the pool: held-out labels are then a
    random sample of held-out pairs, and the accuracy measured on them stands for all of them
    (ordered by the strategy they were the clear pairs, about 7 points easier: bench/retrain_gate.py).
    Their score is NaN and their strategy ``HELD_OUT_STRATEGY``; the strategy comes back as an
    array, one name per pair, when any pair is held out. ``labelled_held_out`` marks the
    labelled pairs on the held-out side: they trained nothing, so strategies do not count
    them as covered.
    """
    n = len(ia)
    held = np.zeros(n, dtype=bool) if held_out is None else np.asarray(held_out, dtype=bool)
    train = np.flatnonzero(~held)
    if labelled is not None and labelled_held_out is not None:
        keep = ~np.asarray(labelled_held_out, dtype=bool)
        labelled = (labelled[0][keep], labelled[1][keep])
    t_priority, t_score, name = _training_priorities(
        probs[:, train], ia=ia[train], ib=ib[train], groups=np.asarray(groups)[train], labelled=labelled,
        features_of=features_of, n_rows=n_rows, dim=dim, options=options, rng=rng)
    if len(train) == n:
        return t_priority, t_score, name
    held_rows = np.flatnonzero(held)
    by_strategy = train[np.argsort(-t_priority, kind="stable")]
    at_random = held_rows[rng.permutation(len(held_rows))]
    # Each side spread evenly over (0, 1) by its own rank, then merged: the held-out share of every
    # stretch of the queue is its share of the pool.
    place = np.concatenate([(np.arange(len(by_strategy)) + 0.5) / max(len(by_strategy), 1),
                            (np.arange(len(at_random)) + 0.5) / len(at_random)])
    from rm.acquisition import priority_of

    priority = priority_of(np.concatenate([by_strategy, at_random])[np.argsort(place, kind="stable")])
    score = np.full(n, np.nan)
    score[train] = t_score
    strategy = np.full(n, name, dtype=object)
    strategy[held_rows] = HELD_OUT_STRATEGY
    return priority, score, strategy


def _training_priorities(probs: np.ndarray, *, ia: np.ndarray, ib: np.ndarray, groups: np.ndarray,
                         labelled: tuple | None, features_of, n_rows: int, dim: int, options,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """:func:`_priorities` for pairs that are all on the training side."""
    try:
        from rm import acquisition
    except ImportError:
        acquisition = None
    if acquisition is None:
        score = -np.abs(probs.mean(axis=0).astype(np.float64) - 0.5)
        return score, score, "margin"
    strategy = acquisition.get_strategy(options.strategy)
    feat = _RowFeatures(n_rows, dim, features_of)
    lab = None
    if labelled is not None and len(labelled[0]):
        lab = acquisition.PairFeatures(feat, labelled[0][-ACQ_LABELLED:], labelled[1][-ACQ_LABELLED:])
    pool = acquisition.Pool(probs=probs, features=acquisition.PairFeatures(feat, ia, ib),
                            groups=np.asarray(groups),
                            labelled=lab)
    priority, score = acquisition.queue_order(strategy, pool, options.batch_size, rng, n_batches=ACQ_BATCHES,
                                              max_candidates=ACQ_CANDIDATES, score_chunk=SCORE_CHUNK)
    return priority, score, str(strategy)[:64]


def write_priorities(session, comparison_ids: np.ndarray, p_a: np.ndarray, priority: np.ndarray | None,
                     score: np.ndarray | None, *, strategy: str | np.ndarray, model_version_id: int | None) -> int:
    """Bulk-write model scores (and priorities unless ``priority`` is None) for open comparisons.

    ``strategy`` is one name for every row or one per row; a NaN score is stored as NULL.
    PostgreSQL: one ``UPDATE … FROM unnest(arrays)`` per 50k rows. SQLite: one
    ``executemany``. Rows no longer open are left alone. Returns rows updated.
    """
    n = len(comparison_ids)
    if n == 0:
        return 0
    ids = np.asarray(comparison_ids, dtype=np.int64).tolist()
    p_list = np.asarray(p_a, dtype=np.float64).tolist()
    keep_priority = priority is None
    pri = None if keep_priority else np.asarray(priority, dtype=np.float64).tolist()
    sco = None if score is None else [None if math.isnan(v) else v
                                      for v in np.asarray(score, dtype=np.float64).tolist()]
    names = [strategy] * n if isinstance(strategy, str) else [str(v) for v in strategy]
    if len(names) != n:
        raise ValueError(f"{len(names)} strategy names for {n} comparisons")
    mv = None if keep_priority else model_version_id
    total = 0
    if session.bind.dialect.name == "postgresql":
        set_priority = "" if keep_priority else "priority = v.priority, "
        set_score = "NULL" if sco is None else "v.score"
        stmt = text(
            f"UPDATE comparisons AS c SET {set_priority}priority_score = {set_score}, "
            "priority_strategy = v.strategy, priority_model_version_id = :mv, model_p_a = v.p "
            "FROM unnest(CAST(:ids AS bigint[]), CAST(:pri AS float8[]), CAST(:sco AS float8[]), "
            "CAST(:p AS float8[]), CAST(:strategy AS text[])) AS v(id, priority, score, p, strategy) "
            "WHERE c.id = v.id AND c.status = 'open'")
        zeros = [0.0] * min(n, _WRITE_CHUNK)
        for s in range(0, n, _WRITE_CHUNK):
            e = min(n, s + _WRITE_CHUNK)
            total += session.execute(stmt, {
                "ids": ids[s:e], "p": p_list[s:e], "strategy": names[s:e], "mv": mv,
                "pri": zeros[:e - s] if keep_priority else pri[s:e],
                "sco": sco[s:e] if sco is not None else zeros[:e - s]}).rowcount
        return total
    table = Comparison.__table__
    values = {"model_p_a": bindparam("v_p"), "priority_score": bindparam("v_score"),
              "priority_strategy": bindparam("v_strategy"), "priority_model_version_id": bindparam("v_mv")}
    if not keep_priority:
        values["priority"] = bindparam("v_priority")
    stmt = (update(table).where(table.c.id == bindparam("v_id"), table.c.status == ComparisonStatus.open.value)
            .values(**values))
    rows = [{"v_id": ids[i], "v_p": p_list[i], "v_score": None if sco is None else sco[i],
             "v_strategy": names[i], "v_mv": mv, **({} if keep_priority else {"v_priority": pri[i]})}
            for i in range(n)]
    return session.connection().execute(stmt, rows).rowcount


# --------------------------------------------------------------------------- run bookkeeping


def _record(db: Database, run_id: int, **values) -> None:
    with db.begin() as session:
        session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(**values))


def remove_artifact(settings: Settings, rel: str | Path) -> None:
    """Delete a run's artifact directory and any half-written copy of it (``rm.artifact``'s temporaries)."""
    import shutil

    path = artifact_location(settings, str(rel))
    targets = [path]
    if path.parent.is_dir():
        targets += [p for p in path.parent.iterdir() if p.name.startswith(f".tmp-{path.name}-")]
    for target in targets:
        shutil.rmtree(target, ignore_errors=True)


def mark_dead_runs(session, settings: Settings | None = None) -> list[int]:
    """Mark runs left ``running`` as failed. Call only while holding the retrain lock.

    With ``settings``, the artifact a dead run saved but never recorded as a
    model version (it died before its final commit) is deleted.
    """
    dead = session.execute(select(TrainingRun.id, TrainingRun.step, TrainingRun.host, TrainingRun.pid,
                                  TrainingRun.metrics)
                           .where(TrainingRun.status == "running")).all()
    for run_id, step, host, pid, metrics in dead:
        rel = (metrics or {}).get("artifact_path")
        if settings is not None and rel and session.scalar(
                select(func.count(ModelVersion.id)).where(ModelVersion.artifact_path == rel)) == 0:
            remove_artifact(settings, rel)
        session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(
            status="failed", finished_at=utcnow(),
            error=f"process died at step {step or 'start'} (pid {pid} on {host}); "
                  "the previous model and priorities were kept"))
    return [r[0] for r in dead]


def run_alive(db: Database, *, stale_after: float = locks.DEFAULT_STALE_SECONDS) -> bool:
    """Whether a retrain process holds the retrain lock now (read-only, for the admin page).

    Every run holds the lock from before its row is added until after its status is final, so a
    run left ``running`` while the lock is free is dead (killed): the next run marks it failed
    (:func:`mark_dead_runs`). The lock's own heartbeat keeps beating through a long step; the
    run's ``heartbeat_at`` moves only between steps.
    """
    return locks.is_held(db, LOCK_NAME, stale_after=stale_after)


def _last_finished(session):
    return session.execute(
        select(TrainingRun.id, TrainingRun.counts, TrainingRun.started_at, TrainingRun.finished_at)
        .where(TrainingRun.status.in_(FINISHED)).order_by(TrainingRun.id.desc()).limit(1)).first()


def new_judgments(session) -> tuple[int, datetime | None, int | None]:
    """``(judgments the last finished run did not see, when that run finished, its id)``: active ones, not
    probes, above its largest id (and, below it, every row it did not see, whatever its state).

    Not only ids above that run's largest: on PostgreSQL an id is taken at insert but
    becomes visible at commit, so a judgment with a smaller id can commit after the
    snapshot, and counting ids alone would never count it (the only new judgment
    would never trigger a run). Judgments are never deleted, so those the run did not
    see are the ids above its largest plus the rows at or below it less the rows it
    saw (``judgments_seen``; :func:`_late_judgments`); runs recorded before that count
    was kept fall back to ids. Each poll counts only the ids above the largest (a
    primary-key range): the late rows are counted in full until no transaction that
    could still add one is open, then remembered.
    """
    last = _last_finished(session)
    counts = (last.counts or {}) if last else {}
    watermark = int(counts.get("max_judgment_id", 0))
    # Labels, not rows: an undone judgment (retracted) or one revised since (superseded) is no new label;
    # counted, each undo and judge-again made two ("217 new judgments" for 212 labels; quality audit).
    n = int(session.scalar(select(func.count(Judgment.id)).where(Judgment.id > watermark,
                                                                 Judgment.is_probe.is_(False),
                                                                 Judgment.state == JudgmentState.active)) or 0)
    if counts.get("judgments_seen") is not None:
        n += _late_judgments(session, last, watermark, int(counts["judgments_seen"]), counts.get("finish_xid"))
    return n, (last.finished_at or last.started_at) if last else None, last.id if last else None


_LATE: dict[tuple, int] = {}
"""Late judgments of finished runs that can get no more (:func:`_late_judgments`), per database and run."""
_LATE_KEPT = 64


def _late_judgments(session, last, watermark: int, seen: int, finish_xid: int | None) -> int:
    """Judgments at or below run ``last``'s largest id that its snapshot did not see (committed later).

    They can only come from transactions open during that run: on SQLite, which
    writes one transaction at a time, there are none; on PostgreSQL there are
    none left once every transaction older than the one that finished the run
    (``finish_xid``, recorded then) has ended. From then on the count is final
    and kept in this process, so the watcher's poll and the overview's
    "Next retrain" line stop counting the whole judgments table every time.
    Until then (a transaction open anywhere on the server since before the run
    ended, an import say) each call counts in full. A count below zero (rows
    deleted with their comparison) is 0.
    """
    key = (session.get_bind().url.render_as_string(), last.id, last.started_at, watermark, seen)
    if key in _LATE:
        return _LATE[key]
    # Checked before counting, so a settled count includes every late row.
    settled = _no_open_transaction_before(session, finish_xid)
    below = session.scalar(select(func.count(Judgment.id)).where(Judgment.id <= watermark,
                                                                 Judgment.is_probe.is_(False))) or 0
    late = max(0, int(below) - seen)
    if settled:
        if len(_LATE) >= _LATE_KEPT:
            _LATE.clear()
        _LATE[key] = late
    return late


def _no_open_transaction_before(session, xid: int | None) -> bool:
    """Whether every transaction up to ``xid`` has ended (always on SQLite; never for an unknown ``xid``)."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    if xid is None:
        return False
    oldest = session.scalar(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"))
    return int(oldest) > int(xid)


def _transaction_id(session) -> int | None:
    """PostgreSQL: this transaction's id (assigned now if it had none); None on SQLite."""
    if session.get_bind().dialect.name != "postgresql":
        return None
    return int(session.scalar(text("SELECT pg_current_xact_id()::text::bigint")))


def _finish(session, run_id: int, status: str, counts: dict, **values) -> None:
    """Give run ``run_id`` its final status, in the caller's transaction.

    Its counts keep this transaction's id (``finish_xid``, PostgreSQL): it started
    after the run's snapshot, so once every transaction up to it has ended no
    judgment the snapshot missed can still commit (:func:`_late_judgments`).
    """
    xid = _transaction_id(session)
    session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(
        status=status, step="done", finished_at=utcnow(),
        counts={**counts, **({"finish_xid": xid} if xid is not None else {})}, **values))


def new_pairs(session, options: campaign.CampaignOptions) -> int:
    """Open comparisons created since the last finished run read the queue: the active model has not scored them.

    They keep their random import priority until a run scores them. 0 without an
    active model, and during the cold start (fewer usable labels than
    ``options.cold_start``): a run then keeps the random order anyway.
    """
    if session.scalar(select(ModelVersion.id).where(ModelVersion.is_active)) is None:
        return 0
    last = _last_finished(session)
    if last is None:
        return 0
    query = select(func.count(Comparison.id)).where(Comparison.status == ComparisonStatus.open)
    watermark = (last.counts or {}).get("max_comparison_id")
    if watermark is not None:
        query = query.where(Comparison.id > int(watermark))
    else:  # a run recorded before the watermark was
        query = query.where(Comparison.created_at > last.started_at)
    n = int(session.scalar(query) or 0)
    if n and options.cold_start > 0:
        # Counted up to the cold start only: the question is whether it is over, not how many labels there are.
        usable = session.scalar(select(func.count()).select_from(
            select(Judgment.id).where(*_label_filter(), Judgment.choice != Choice.both_bad)
            .limit(options.cold_start).subquery())) or 0
        if usable < options.cold_start:
            return 0
    return n


# --------------------------------------------------------------------------- the run


def run_once(settings: Settings, force: bool = False, *, db: Database | None = None,
             lock_stale_seconds: float = locks.DEFAULT_STALE_SECONDS, encoder=None, train_config=None,
             stop: threading.Event | None = None, on_start=None, replace_missing: bool = False) -> RetrainResult:
    """One retrain + rescore cycle under the retrain lock.

    ``replace_missing``: an active model whose artifact is missing here although another host trained it
    is treated as gone (its host lost, the database restored on a new machine) instead of failing the run;
    without it such a run fails, so watchers with separate data folders never replace each other's models.

    Skipped (no run recorded) when another run holds the lock (:data:`LOCK_BUSY`), or, unless
    ``force``, when no judgment arrived since the last finished run and no
    open pair was created since (:func:`new_pairs`).
    ``encoder`` and ``train_config`` override the configured encoder and
    ``rm.train.TrainConfig()`` (tests and benchmarks). ``on_start(run_id)`` is
    called once the run holds the lock and is recorded.
    """
    own_db = db is None
    db = db or open_database(settings)
    try:
        lock = locks.acquire(db, LOCK_NAME, stale_after=lock_stale_seconds)
        if lock is None:
            return RetrainResult("skipped", LOCK_BUSY)
        try:
            with db.begin() as session:
                dead = mark_dead_runs(session, settings)
                n_new, _, last_id = new_judgments(session)
                if session.scalar(select(Judgment.id).where(*_label_filter()).limit(1)) is None:
                    return RetrainResult("skipped", "no judgments yet: label some pairs first")
                if (not force and last_id is not None and n_new == 0
                        and new_pairs(session, campaign.get_options(session, settings)) == 0):
                    return RetrainResult("skipped", f"no new judgments or pairs since run {last_id} (use --force)")
                run = TrainingRun(status="running", step="start", host=socket.gethostname()[:256],
                                  pid=os.getpid(), heartbeat_at=utcnow(),
                                  counts={"dead_runs_marked": len(dead)} if dead else {})
                session.add(run)
                session.flush()
                run_id, counts = run.id, dict(run.counts)
            if on_start is not None:
                on_start(run_id)
            run = _Run(settings, db, lock, run_id, encoder, train_config, stop, counts)
            run.replace_missing = replace_missing
            return run.execute()
        finally:
            lock.release()
    finally:
        if own_db:
            db.dispose()


class _Run:
    def __init__(self, settings, db, lock, run_id, encoder, train_config, stop, counts=None):
        self.settings, self.db, self.lock, self.run_id = settings, db, lock, run_id
        self.encoder = encoder
        self.train_config = train_config
        self.stop = stop
        self.step = "start"
        self.replace_missing = False
        """See :func:`run_once`."""
        self.artifact: Path | None = None
        """The artifact this run saves (relative to the data folder), once it is named."""
        self.committed = False
        """Whether the final transaction (version, promotion, priorities) committed."""
        self.timings: dict[str, float] = {}
        self.counts: dict[str, int] = dict(counts or {})
        """Recorded with the run; it starts with what ``run_once`` recorded (``dead_runs_marked``)."""
        self._t0 = 0.0
        self._parts: dict[str, float] = {}
        """Seconds of the current step spent on work timed on its own (``embed_pool`` in ``score``)."""

    def _begin(self, step: str) -> None:
        now = time.perf_counter()
        if self.step != "start":
            # Parts timed on their own are recorded under their names, before the step, and not in it.
            for name, seconds in self._parts.items():
                self.timings[name] = round(seconds, 4)
            self.timings[self.step] = round(now - self._t0 - sum(self._parts.values()), 4)
            self._parts = {}
        if self.stop is not None and self.stop.is_set():
            raise Stopped(f"stopped by signal before step {step}")
        self.step, self._t0 = step, now
        _record(self.db, self.run_id, step=step, heartbeat_at=utcnow(), timings=dict(self.timings))
        if step != "promote":
            _crash_point(step)

    def _timed(self, part: str, fn):
        """``fn`` with the seconds spent in it counted as ``part`` of the current step (:meth:`_begin`)."""
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._parts[part] = self._parts.get(part, 0.0) + time.perf_counter() - t
        return timed

    def execute(self) -> RetrainResult:
        t_start = time.perf_counter()
        try:
            result = self._steps()
            self.timings["total"] = round(time.perf_counter() - t_start, 4)
            result.timings = dict(self.timings)
            _record(self.db, self.run_id, timings=dict(self.timings))
            return result
        except BaseException as exc:  # noqa: BLE001 - the run must be marked whatever happened
            message = f"{type(exc).__name__} at step {self.step}: {exc}"
            if isinstance(exc, (Stopped, KeyboardInterrupt)):
                self.counts[STOPPED] = True  # on purpose (a restart, Ctrl-C): not a failure to back off from
            if not isinstance(exc, (PrefloopError, KeyboardInterrupt)):
                log.error("retrain run %s failed:\n%s", self.run_id, traceback.format_exc())
            if self.artifact is not None and not self.committed:
                # No version row will ever name it.
                remove_artifact(self.settings, self.artifact)
            try:
                _record(self.db, self.run_id, status="failed", error=message[:4000], finished_at=utcnow(),
                        timings=dict(self.timings), counts=dict(self.counts))
            except Exception:  # the database is gone: the next run marks this one as dead
                log.exception("could not mark run %s failed", self.run_id)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return RetrainResult("failed", message, run_id=self.run_id, counts=dict(self.counts),
                                 timings=dict(self.timings))

    def _steps(self) -> RetrainResult:
        from rm.cache import EmbeddingCache
        from rm.data import A_WINS, B_WINS, TIE, PairData
        from rm.features import FeatureSpec, build_features
        from rm.split import held_out_mask
        from rm.train import TrainConfig, train_ensemble

        settings = self.settings
        # 1. snapshot
        self._begin("snapshot")
        with self.db.read() as session:
            snap = take_snapshot(session, settings)
        usable = np.isin(snap.lab_outcome, (A_WINS, B_WINS, TIE))
        test_mask = held_out_mask(snap.lab_group, TEST_FRACTION)
        self.counts.update(
            max_judgment_id=snap.max_judgment_id, judgments_seen=snap.judgments_seen,
            max_comparison_id=snap.max_comparison_id,
            n_judgments=snap.n_judgments,
            n_train=int((usable & ~test_mask).sum()), n_test=int((usable & test_mask).sum()),
            n_prompts=int(len(set(snap.lab_group.tolist()))), n_open=int(len(snap.open_ids)),
            n_responses=int(len(snap.resp_ids)))
        from annotate.settings import unknown_strategy

        if problem := unknown_strategy(snap.options.strategy):
            # Saved before names were checked: say so before spending a training run on it.
            return self._finish_skipped(f"the campaign's acquisition strategy cannot be used ({problem}); "
                                        "an admin must pick one on the Settings page")
        if self.counts["n_train"] == 0:
            return self._finish_skipped("no usable judgments on the training side yet "
                                        "(both-bad pairs are not used): label more pairs")

        # 2. embed the texts of labelled pairs (open ones are read chunk by chunk in 'score')
        self._begin("embed")
        encoder = self.encoder or get_encoder(settings)
        cache = EmbeddingCache(settings.cache_dir, encoder)
        spec = FeatureSpec()
        lab_rows = np.unique(np.concatenate([snap.lab_ia, snap.lab_ib]))
        feat_lab = build_features(_take(snap.resp_prompt_text, lab_rows), _take(snap.resp_text, lab_rows),
                                  cache, spec)

        # 3. train (no transaction open)
        self._begin("train")
        lengths = np.fromiter((len(snap.resp_text[r]) for r in lab_rows.tolist()), dtype=np.int64,
                              count=len(lab_rows))
        data = PairData(feat_lab, np.searchsorted(lab_rows, snap.lab_ia), np.searchsorted(lab_rows, snap.lab_ib),
                        snap.lab_outcome, snap.lab_strength, group=snap.lab_group, length=lengths)
        train, test = data.subset(~test_mask), data.subset(test_mask)
        config = self.train_config or TrainConfig(num_threads=settings.torch_threads)
        # One seed for every run: the same labels train the same model. Seeded by the run, a retrain with no
        # new labels (Retrain now, or a run for newly imported pairs) drew other bootstrap samples, and its
        # model, another on the same labels, replaced the active one or was rejected against it.
        ens = train_ensemble(train, config, seed=settings.queue_seed)

        # 4. evaluate, against the active model on the same held-out pairs
        self._begin("evaluate")
        from rm.evaluate import evaluate_with_votes

        new_metrics = new_correct = None
        if len(test):
            scored, new_correct = evaluate_with_votes(ens, test)
            new_metrics = _clean(scored.to_dict())
        active_metrics, active_model, active_correct = self._evaluate_active(snap, encoder, spec, test, lab_rows)
        new_acc = (new_metrics or {}).get("accuracy")
        active_acc = (active_metrics or {}).get("accuracy") if snap.active else None
        # Pairs, not votes: the judgments of one pair share its difficulty, so three votes on ten
        # pairs are no more a sample of thirty than ten pairs are.
        decisive = np.isin(snap.lab_outcome, (A_WINS, B_WINS))
        n_held_out = int(len(np.unique(snap.lab_comparison[test_mask & decisive])))
        # Both models on the same judgments, so the gate tests their difference pair by pair.
        paired = (paired_comparison(new_correct, active_correct, snap.lab_comparison[test_mask])
                  if active_correct is not None else None)
        tolerance = settings.promote_tolerance
        promote, reason = promotion_decision(new_acc, active_acc, tolerance,
                                             has_active=snap.active is not None,
                                             active_loadable=snap.active is None or active_model is not None,
                                             n_held_out=n_held_out, new_n_train=self.counts["n_train"],
                                             active_n_train=snap.active["n_train"] if snap.active else None,
                                             paired=paired, confidence=settings.promote_confidence)
        metrics = {"new": new_metrics, "active": active_metrics, "promoted": promote, "reason": reason,
                   "n_held_out_decisive": n_held_out,
                   "paired": paired.to_dict(tolerance) if paired is not None else None,
                   "active_version_id": snap.active["id"] if snap.active else None}
        _record(self.db, self.run_id, metrics=metrics, counts=dict(self.counts))

        # 5. save
        self._begin("save")
        from rm.artifact import save_artifact

        stamp = utcnow().strftime("%Y%m%dT%H%M%S")
        rel = Path("models") / f"rm-run{self.run_id:06d}-{stamp}"
        # Recorded before writing, so the run that finds this one dead can remove it.
        self.artifact = rel
        _record(self.db, self.run_id, metrics={**metrics, "artifact_path": rel.as_posix()})
        save_artifact(settings.data_dir / rel, ens, encoder=encoder.describe(), features=spec,
                      metrics=new_metrics or {}, data_counts=dict(self.counts),
                      extra={"training_run_id": self.run_id, "promotion": reason})

        # 6. score every open comparison with the model that will be active: each response once
        self._begin("score")
        from rm.heads import pair_probabilities

        n_labels = int(usable.sum())
        cold = n_labels < snap.options.cold_start
        open_rows = np.unique(np.concatenate([snap.open_ia, snap.open_ib]))
        rows = open_rows if cold else np.union1d(open_rows, lab_rows)
        if promote:
            scorer = ens

            def featurize(sel):
                return build_features(_take(snap.resp_prompt_text, sel), _take(snap.resp_text, sel), cache, spec)
            known = (lab_rows, feat_lab)
        else:
            scorer, featurize, known = self._active_scorer(active_model, snap, encoder, spec, lab_rows, feat_lab)
        # The pool's texts are embedded here (or read from the cache), chunk by chunk: timed as embed_pool.
        featurize = self._timed("embed_pool", featurize)
        rewards = score_responses(scorer, rows, featurize, known=known)
        self.counts["n_embedded"] = int(cache.n_computed)
        oia, oib = np.searchsorted(rows, snap.open_ia), np.searchsorted(rows, snap.open_ib)
        probs = pair_probabilities(rewards, oia, oib)
        p_a = probs.mean(axis=0)
        del rewards
        priority, score, strategy = None, None, "random"
        if not cold:
            inv_scale = (1.0 / np.asarray(scorer.scale, dtype=np.float32))

            def features_of(sel):
                sel_rows = rows[sel]
                if known is not None and np.isin(sel_rows, known[0]).all():
                    f = known[1][np.searchsorted(known[0], sel_rows)]
                else:
                    f = featurize(sel_rows)
                return np.asarray(f, dtype=np.float32) * inv_scale

            priority, score, strategy = _priorities(
                probs, ia=oia, ib=oib, groups=snap.open_group, held_out=snap.open_held_out,
                labelled=(np.searchsorted(rows, snap.lab_ia), np.searchsorted(rows, snap.lab_ib)),
                labelled_held_out=test_mask,
                features_of=features_of, n_rows=len(rows), dim=len(inv_scale), options=snap.options,
                rng=np.random.default_rng([settings.queue_seed, self.run_id]))
        del probs

        # 7. promote: version, promotion, priorities and run status in one short transaction,
        # run again if PostgreSQL picks it as a deadlock victim (against a re-import or an
        # annotator's claim of the same rows): the aborted attempt wrote nothing, and the
        # trained model is not thrown away over it.
        self._begin("promote")

        def promote_tx(session):
            self.lock.check()
            version = ModelVersion(
                artifact_path=rel.as_posix(), encoder_id=encoder.encoder_id[:128],
                metrics={**(new_metrics or {}), "gate": reason, "gate_compared_with": metrics["active_version_id"],
                         "gate_paired": metrics["paired"], "n_held_out_decisive": n_held_out,
                         "train_info": _clean(ens.info), "temperature": float(ens.temperature)},
                n_train=self.counts["n_train"], n_test=self.counts["n_test"], training_run_id=self.run_id)
            session.add(version)
            session.flush()
            if promote:
                session.execute(update(ModelVersion).where(ModelVersion.is_active, ModelVersion.id != version.id)
                                .values(is_active=False))
                session.flush()
                session.execute(update(ModelVersion).where(ModelVersion.id == version.id)
                                .values(is_active=True, promoted=True, promoted_at=utcnow()))
            scoring_id = version.id if promote else snap.active["id"]
            self.counts["n_priorities_written"] = write_priorities(
                session, snap.open_ids, p_a, priority, score, strategy=strategy, model_version_id=scoring_id)
            status = "succeeded" if promote else "rejected"
            self.timings["promote"] = round(time.perf_counter() - self._t0, 4)
            _finish(session, self.run_id, status, dict(self.counts), timings=dict(self.timings),
                    error=None if promote else reason)
            session.flush()
            _crash_point("promote")
            return status, version.id

        status, version_id = self.db.transact(promote_tx)
        self.committed = True
        return RetrainResult(status, reason, run_id=self.run_id, model_version_id=version_id,
                             promoted=promote, metrics=metrics, counts=dict(self.counts))

    def _finish_skipped(self, message: str) -> RetrainResult:
        with self.db.begin() as session:
            _finish(session, self.run_id, "skipped", dict(self.counts), error=message)
        return RetrainResult("skipped", message, run_id=self.run_id, counts=dict(self.counts))

    def _load_active(self, snap):
        from rm.model import load

        location = artifact_location(self.settings, snap.active["artifact_path"])
        trained_on = snap.active.get("trained_on")
        if not location.exists() and trained_on and trained_on != socket.gethostname()[:256]:
            # Not deleted but on another machine: replacing it here would leave that machine
            # unable to load ours, and the watchers would replace each other's models for ever.
            if not self.replace_missing:
                raise PrefloopError(f"{artifact_elsewhere(snap.active['id'], trained_on, location)}; if that "
                                    "machine is gone (a database restored on a new one), run 'prefloop retrain "
                                    "--once --force --replace-missing'")
            log.warning("active model %s (trained on host %s) is not at %s: replaced, as asked",
                        snap.active["id"], trained_on, location)
            return None
        try:
            return load(location, cache_dir=self.settings.cache_dir)
        except Exception as exc:  # a broken active artifact must not block a new model
            log.warning("active model %s cannot be loaded: %s", snap.active["id"], exc)
            return None

    def _evaluate_active(self, snap, encoder, spec, test, lab_rows):
        """The active model's metrics on this run's held-out pairs, the model (None if it cannot score) and
        its per-judgment correctness on them (``rm.evaluate.vote_correctness``; None when not re-scored).

        A model trained on another encoder or feature spec is re-scored with its own (as it scores the
        queue), so both models are always compared on the same held-out judgments: its stored metrics
        come from the held-out labels of its own run, another set of pairs. One whose encoder cannot
        be loaded any more cannot score the queue either (None). Without held-out pairs (nothing to
        compare on) its stored metrics are returned for the record.
        """
        from dataclasses import replace

        from rm.evaluate import evaluate_with_votes

        if snap.active is None:
            return None, None, None
        model = self._load_active(snap)
        same = model is not None and model.info.encoder_id == encoder.encoder_id and model.features == spec
        if model is not None and not same:
            try:
                model.encoder  # loaded and its id checked
            except Exception as exc:  # its encoder is gone: it can score nothing, the queue included
                log.warning("active model %s cannot load its own encoder: %s", snap.active["id"], exc)
                model = None
        if model is None or not len(test):
            stored = dict(snap.active.get("metrics") or {})
            stored["note"] = "stored metrics (the active model could not be re-scored on this split)"
            return stored, model, None
        if not same:
            rows = np.unique(np.concatenate([test.ia, test.ib]))
            own = model.featurize(_take(snap.resp_prompt_text, lab_rows[rows]),
                                  _take(snap.resp_text, lab_rows[rows]))
            feat = np.zeros((len(test.feat), own.shape[1]), dtype=np.float32)
            feat[rows] = own
            test = replace(test, feat=feat)
        scored, correct = evaluate_with_votes(model.ensemble, test)
        return _clean(scored.to_dict()), model, correct

    def _active_scorer(self, model, snap, encoder, spec, lab_rows, feat_lab):
        if model is None:
            raise PrefloopError(f"the active model {snap.active['id']} cannot be loaded to score the queue "
                                "and the new model was not promoted; fix or retrain with --force")

        def featurize(sel):
            return model.featurize(_take(snap.resp_prompt_text, sel), _take(snap.resp_text, sel))
        same = model.info.encoder_id == encoder.encoder_id and model.features == spec
        return model.ensemble, featurize, ((lab_rows, feat_lab) if same else None)


# --------------------------------------------------------------------------- watch


RETRY_MINUTES = (1, 2, 4, 8, 16, 32, 60)
"""How long the watcher waits after 1, 2, … runs in a row failed (then every 60 minutes)."""


def _failures_in_a_row(session) -> tuple[int, datetime | None]:
    """``(failed runs since the last finished one, when the latest of them ended)``.

    Runs stopped on purpose (SIGTERM/SIGINT: ``counts["stopped"]``, :data:`STOPPED`) are not counted: a
    restart is no persistent error, and the next watcher must not wait for it. A crash, a kill -9
    (:func:`mark_dead_runs`) or an exception is counted.
    """
    last = _last_finished(session)
    stopped = TrainingRun.counts[STOPPED].as_boolean()
    query = select(func.count(TrainingRun.id), func.max(TrainingRun.finished_at)).where(
        TrainingRun.status == "failed", or_(stopped.is_(None), stopped == false()))
    if last is not None:
        query = query.where(TrainingRun.id > last.id)
    n, at = session.execute(query).one()
    return int(n or 0), at


@dataclass(frozen=True)
class DueCheck:
    """What :func:`check_due` found: whether the watcher retrains now, why, and when it next may."""

    due: bool
    reason: str
    new_judgments: int
    new_pairs: int
    failures: int
    """Failed runs in a row since the last finished one."""
    next_at: datetime | None
    """When the watcher may next retrain: while it waits after failed runs, the end of that wait (or,
    when no trigger has fired yet, the later of that and when the time trigger fires); else when the
    time trigger fires (if a judgment arrived); None before any finished run."""


def check_due(session, settings: Settings, *, since: datetime, now: datetime | None = None) -> DueCheck:
    """Whether the watcher should retrain at ``now``, why, and when it next may (the watcher's one rule).

    It fires after ``retrain_every_labels`` new judgments, after
    ``retrain_every_minutes`` once one arrived (counted from the last finished
    run, or from ``since`` before any), and when open pairs were created since
    the last finished run (:func:`new_pairs`), so imported pairs are ranked
    without waiting for labels. After a failed run it waits
    (:data:`RETRY_MINUTES`, longer after each failure in a row) instead of
    training again at its next poll; a trigger that has already fired then
    fires at the end of that wait (``next_at``). Runs stopped on purpose
    (SIGTERM/SIGINT) are not failures here (:func:`_failures_in_a_row`).
    """
    now = now or utcnow()
    options = campaign.get_options(session, settings)
    every = timedelta(minutes=options.retrain_every_minutes)
    n_new, last_at, _ = new_judgments(session)
    time_at = last_at + every if last_at is not None else None
    n_pairs = 0
    new = counted(n_new, "new judgment")
    if n_new >= options.retrain_every_labels:
        fire, why = True, new
    else:
        baseline = last_at or since
        fire = n_new >= 1 and now - baseline >= every
        minutes = options.retrain_every_minutes
        why = f"{new} and {minutes:g} minute{'' if minutes == 1 else 's'} passed" if fire else new
        if not fire and (n_pairs := new_pairs(session, options)):
            fire, why = True, f"{why}; {counted(n_pairs, 'new pair')} the active model has not scored"
    failures, failed_at = _failures_in_a_row(session)
    if failures and failed_at is not None:
        retry_at = failed_at + timedelta(minutes=RETRY_MINUTES[min(failures, len(RETRY_MINUTES)) - 1])
        if now < retry_at:
            failed = "the last run failed" if failures == 1 else f"the last {failures} runs failed"
            wait = f"{failed}, next try after {retry_at:%Y-%m-%d %H:%M:%S} UTC"
            # Fired already (labels, time or new pairs): the watcher retrains as soon as the wait ends.
            next_at = retry_at if fire or time_at is None else max(retry_at, time_at)
            return DueCheck(False, f"{why}; {wait}", n_new, n_pairs, failures, next_at)
    return DueCheck(fire, why, n_new, n_pairs, failures, time_at)


def due(session, settings: Settings, *, since: datetime) -> tuple[bool, str]:
    """``(whether the watcher should retrain now, why)``: :func:`check_due` at this moment."""
    check = check_due(session, settings, since=since)
    return check.due, check.reason


def watch(settings: Settings, *, db: Database | None = None, poll_seconds: float = 5.0,
          stop: threading.Event | None = None, ready: Callable[[], None] | None = None, **run_kwargs) -> None:
    """Retrain whenever :func:`due` says so, until SIGTERM/SIGINT (or ``stop`` is set).

    A signal stops the loop at once when idle; a run in progress stops at its
    next step boundary and is marked failed and stopped (:data:`STOPPED`; the
    previous model stays active), which the next watcher does not wait for.
    ``ready`` raises :class:`PrefloopError` while the database cannot be used yet (no SQLite file, not
    migrated, unreachable): the watcher says why once, opens nothing (opening makes a missing SQLite
    file), and checks again at each poll until it passes (the CLI passes its schema check).
    """
    stop = stop or threading.Event()
    started = utcnow()
    _say(f"retrain watcher started (poll every {poll_seconds:g} s)", started)
    with stop_on_signals(stop):
        if ready is not None and not _wait_until_ready(ready, poll_seconds, stop):
            _say("retrain watcher stopped")
            return
        _watch(settings, db or open_database(settings), poll_seconds, stop, run_kwargs, started)


def _wait_until_ready(ready: Callable[[], None], poll_seconds: float, stop: threading.Event) -> bool:
    """Wait until ``ready`` passes (True) or ``stop`` is set (False), saying why it fails each time that changes."""
    said = None
    while not stop.is_set():
        try:
            ready()
        except PrefloopError as exc:
            if str(exc) != said:
                said = str(exc)
                _say(f"waiting for the database: {said}")
            stop.wait(poll_seconds)
            continue
        if said is not None:
            _say("the database is ready")
        return True
    return False


def _watch(settings: Settings, db: Database, poll_seconds: float, stop: threading.Event, run_kwargs,
           started: datetime) -> None:
    waiting = False  # said once that another process's run holds the lock, until it lets go
    try:
        while not stop.is_set():
            try:
                with db.read() as session:
                    fire, why = due(session, settings, since=started)
                # Another watcher (or Retrain now) is training: say so once, not at every poll.
                if fire and run_alive(db):
                    waiting = _say_waiting(waiting, why)
                elif fire:
                    def announce(_run_id, why=why):
                        _say(f"retraining: {why}")

                    result = run_once(settings, db=db, stop=stop, on_start=announce, **run_kwargs)
                    if result.run_id is None and result.message == LOCK_BUSY:
                        waiting = _say_waiting(waiting, why)  # it took the lock after run_alive looked
                    else:
                        waiting = False
                        _say(result.summary())
            except Exception:
                log.exception("retrain watcher: check failed; retrying")
            stop.wait(poll_seconds)
    finally:
        db.dispose()
        _say("retrain watcher stopped")


def _stamp(at: datetime | None = None) -> str:
    """How each entry of the watcher's log (``retrain.log`` under ``make run``) starts: the UTC time, the host
    and the process id, so that watchers sharing a data directory can be told apart."""
    return f"{at or utcnow():%Y-%m-%d %H:%M:%S} {socket.gethostname()}[{os.getpid()}]"


def _say(message: str, at: datetime | None = None) -> None:
    """Write one entry of the watcher's log on standard output (a run's summary continues on the lines below)."""
    print(f"{_stamp(at)} {message}", flush=True)


class LogFormatter(logging.Formatter):
    """``logging`` records (a failed run's traceback, a warning) headed as the watcher's own entries."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{_stamp(datetime.fromtimestamp(record.created, timezone.utc))} {super().format(record)}"


def log_to_stderr() -> None:
    """Write prefloop's log records (a failed run's traceback, warnings, the watcher's signal) from INFO up on
    standard error, headed as the watcher's own entries: under ``make run`` both go to ``retrain.log``."""
    logger = logging.getLogger("prefloop")
    if not any(isinstance(h.formatter, LogFormatter) for h in logger.handlers):  # once per process
        handler = logging.StreamHandler()
        handler.setFormatter(LogFormatter())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _say_waiting(said: bool, why: str) -> bool:
    """Log once that the watcher is due but another process's run holds the lock; True (said)."""
    if not said:
        _say(f"due ({why}), but another retrain is running: waiting for it")
    return True


SAME_PRESS_SECONDS = 5
"""A Retrain now pressed again this soon after the start it made (the second click of a double click) shows
that run and starts none, even when the run already ended (one with nothing to do takes about a second)."""


def start_background_run(session, settings: Settings, *, actor) -> tuple[int, Path]:
    """Start ``prefloop retrain --once --force`` as a separate process (admin only).

    Returns ``(pid, log path)``. The encoder and training never run inside the
    caller's process (the web server); if another run holds the lock the new
    process exits with "skipped".
    """
    import subprocess
    import sys

    from annotate.accounts import audit, require_admin

    require_admin(session, actor)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.data_dir / "retrain-manual.log"
    env = {**os.environ, "PREFLOOP_DATA_DIR": str(settings.data_dir),
           "PREFLOOP_DATABASE_URL": settings.sqlalchemy_url}
    if settings.encoder_path:
        env["PREFLOOP_ENCODER_PATH"] = settings.encoder_path
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "annotate.cli", "retrain", "--once", "--force"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    threading.Thread(target=proc.wait, name=f"reap-retrain-{proc.pid}", daemon=True).start()  # no zombie
    audit(session, actor, "model.retrain", pid=proc.pid)
    return proc.pid, log_path
