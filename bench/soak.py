"""Soak test of the annotation path: many annotators at once, invariants checked at the end.

    python bench/soak.py [postgresql | sqlite | URL] [--annotators 12] [--second-tabs 4] [--pairs 300]
                         [--seconds 60] [--speed 30] [--seed 0]

``postgresql`` (the default) runs on a scratch database on the server at
``PREFLOOP_TEST_PG_URL`` (127.0.0.1:5432), dropped afterwards; ``sqlite`` on a
temporary file; a URL on that (empty) database, migrated first.

Each annotator is a thread per browser tab (``--second-tabs`` of them have two)
that does what the annotation page does, through the same service calls: a page
load (``queue.next_comparison`` and ``judgments.progress`` in one ``db.transact``),
then after a think time of 0-20 ms a press: judge (``judgments.submit`` with the
``a_on_left`` the assignment showed), skip or undo, each in its own
``db.transact``. Some presses are sent twice at once (two tabs, or a double
click that got past the page), and some come after the annotator was away for
longer than the lease. Meanwhile a separate "retraining process" (its own
engine) rewrites every open pair's priority in one transaction, over and over,
as the retrain job's promote step does (``retrain.write_priorities``, on ids
read in an earlier transaction).

Time runs ``--speed`` times faster than the wall clock for the services (every
call gets ``now=``), so leases (``--lease-seconds``, 10 of those seconds) expire
under a second and judgments become old enough to be probed (2 minutes) within
seconds. Rows' own defaults (a new lease's ``created_at``) still use the wall clock.

At the end it checks, and prints one line each:

* every submit that returned is stored, with the side and choice it was sent
  with; per annotator and pair the rows are exactly the submits that returned,
  as many of them retracted as undos returned that pair (nothing lost, nothing extra);
* each pair's ``judgment_count`` equals its live non-probe judgments, and its
  status follows (``complete`` once the count reaches the target);
* no pair has more live judgments than its overlap target, except by judgments
  sent after their lease had expired, or whose lease ran out while the submit
  waited for locks (its time is read when it starts), each counted apart (a
  re-judgment after an undo counts as the judgment it replaced: undo leases the
  pair back to its annotator whatever the count);
* no annotator has two live judgments (or two live probes) of one pair, and a press
  sent twice at once is saved once (twice only with an undo of that pair in between);
* no annotator holds an unskipped, ordinary lease on a pair they have judged;
* the aggregated preference export (``export.preference_rows``) agrees with the votes;
* messages users saw, by kind; an unexpected exception (a traceback on the page) is a defect.

``run_soak`` is what ``tests/test_soak.py`` calls, on a migrated database.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import OperationalError, ProgrammingError

from annotate import judgments, migrate, queue
from annotate.accounts import Actor, create_user
from annotate.campaign import get_options, update_options
from annotate.db import Database, create_db_engine, is_transient
from annotate.errors import PrefloopError
from annotate.export import ExportFilter, preference_rows
from annotate.models import (
    Choice,
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentState,
    Lease,
    Prompt,
    Response,
    Role,
    utcnow,
)
from annotate.retrain import write_priorities
from annotate.settings import load_settings

PG_ADMIN = os.environ.get("PREFLOOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
PRESSES = ("left", "right", "tie", "both_bad")
PRESS_WEIGHTS = (0.45, 0.42, 0.09, 0.04)


@dataclass(frozen=True)
class SoakConfig:
    annotators: int = 12
    second_tabs: int = 4
    """Annotators who work in two browser tabs at once."""
    pairs: int = 300
    gold_pairs: int = 10
    seconds: float = 60.0
    """Wall-clock limit of the annotation phase (it ends sooner when the queue is drained)."""
    speed: float = 30.0
    lease_seconds: int = 10
    overlap: int = 2
    max_overlap: int = 3
    gold_rate: float = 0.05
    probe_rate: float = 0.1
    think_ms: tuple[float, float] = (0.0, 20.0)
    p_skip: float = 0.05
    p_undo: float = 0.07
    p_double: float = 0.05
    p_away: float = 0.03
    """A press made after longer than the lease away from the screen."""
    retrain_hold_ms: float = 30.0
    """How long each priority rewrite keeps its transaction (and its row locks) open."""
    retrain_pause_ms: float = 150.0
    seed: int = 0


class Clock:
    """The services' time: ``speed`` times faster than the wall clock, from now."""

    def __init__(self, speed: float) -> None:
        self.speed, self.t0, self.p0 = speed, utcnow(), time.perf_counter()

    def now(self) -> datetime:
        return self.t0 + timedelta(seconds=(time.perf_counter() - self.p0) * self.speed)

    def real(self, sim_seconds: float) -> float:
        return sim_seconds / self.speed


@dataclass
class Log:
    """What the annotators' threads saw, appended under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    submits: list[dict] = field(default_factory=list)
    undos: list[tuple[int, judgments.Undone]] = field(default_factory=list)
    skips: list[tuple[int, int]] = field(default_factory=list)
    seen: Counter = field(default_factory=Counter)
    """(action, message) -> count: what users were told instead of the action happening."""
    unexpected: list[str] = field(default_factory=list)
    serve_s: list[float] = field(default_factory=list)
    submit_s: list[float] = field(default_factory=list)
    double_outcomes: Counter = field(default_factory=Counter)
    double_saved_twice: list[tuple[int, int]] = field(default_factory=list)
    """(annotator, pair) of double presses both saved: only right when an undo came in between."""
    rewrites: int = 0
    rewrite_s: list[float] = field(default_factory=list)
    rewrite_errors: Counter = field(default_factory=Counter)

    def add(self, name: str, item) -> None:
        with self.lock:
            getattr(self, name).append(item)

    def told(self, action: str, message: str) -> None:
        with self.lock:
            self.seen[(action, message)] += 1


@dataclass
class SoakResult:
    backend: str
    config: SoakConfig
    wall_s: float
    log: Log
    checks: dict[str, int]
    """Invariant name -> number of violations (0 is good), plus informational counts."""
    details: dict[str, list] = field(default_factory=dict)

    DEFECTS = ("lost_submits", "extra_rows", "wrong_side_or_choice", "undo_mismatch", "count_mismatch",
               "status_mismatch", "over_target_unexplained", "two_live_judgments", "two_live_probes",
               "stale_leases_on_judged_pairs", "double_press_saved_twice_without_undo", "export_mismatch",
               "unexpected_exceptions")

    @property
    def defects(self) -> dict[str, int]:
        return {k: self.checks[k] for k in self.DEFECTS if self.checks.get(k)}


# --------------------------------------------------------------------------- setup


def _setup(db: Database, settings, config: SoakConfig) -> tuple[Actor, list[Actor]]:
    rng = random.Random(config.seed)
    with db.begin() as s:
        admin_user = create_user(s, "soak-admin", "soak-password", Role.admin, system=True)
        admin = Actor(admin_user.id, admin_user.username, Role.admin)
        users = [create_user(s, f"soak{i:02d}", "soak-password", Role.annotator, system=True)
                 for i in range(config.annotators)]
        update_options(s, settings, actor=admin, overlap=config.overlap, max_overlap=config.max_overlap,
                       gold_rate=config.gold_rate, probe_rate=config.probe_rate)
        for i in range(config.pairs + config.gold_pairs):
            gold = i >= config.pairs
            prompt = Prompt(content_hash=uuid.uuid4().hex, text=f"Soak prompt {i}: explain something.")
            s.add(prompt)
            s.flush()
            a = Response(prompt_id=prompt.id, content_hash=f"a{i}", text=f"Answer A to {i}.")
            b = Response(prompt_id=prompt.id, content_hash=f"b{i}", text=f"Answer B to {i}, a longer one.")
            s.add_all([a, b])
            s.flush()
            s.add(Comparison(prompt_id=prompt.id, response_a_id=a.id, response_b_id=b.id,
                             overlap_target=rng.choice((config.overlap, config.max_overlap)),
                             is_gold=gold, gold_choice=Choice.a if gold else None, priority=rng.random()))
    return admin, [Actor(u.id, u.username, Role.annotator) for u in users]


# --------------------------------------------------------------------------- the annotators


class Tab:
    """One browser tab of one annotator: page loads and presses, as the annotation page makes them."""

    def __init__(self, db, settings, clock: Clock, config: SoakConfig, log: Log, actor: Actor, rng: random.Random):
        self.db, self.settings, self.clock, self.config, self.log = db, settings, clock, config, log
        self.actor, self.rng = actor, rng

    def _guard(self, action: str, call):
        """``call()``, or None after recording what the page would have shown instead."""
        try:
            return call()
        except PrefloopError as exc:
            self.log.told(action, str(exc))
        except (OperationalError, ProgrammingError) as exc:
            busy = "database is locked" in str(getattr(exc, "orig", "")).lower() or is_transient(exc)
            self.log.told(action, f"[database {'busy' if busy else 'down'}] {type(getattr(exc, 'orig', exc)).__name__}")
        except Exception:
            self.log.add("unexpected", f"{action} by {self.actor.username}:\n{traceback.format_exc()}")
        return None

    def load(self):
        """A page load: the assignment (None when nothing is left or the page showed an error)."""
        def page(s, self=self):
            options = get_options(s, self.settings)
            asg = queue.next_comparison(s, self.settings, options, actor=self.actor, now=self.clock.now())
            judgments.progress(s, actor=self.actor, now=self.clock.now())
            return asg or False
        t0 = time.perf_counter()
        asg = self._guard("serve", lambda: self.db.transact(page))
        self.log.add("serve_s", time.perf_counter() - t0)
        return asg

    def judge(self, asg: queue.Assignment, shown: str, strength: int | None) -> bool:
        sent: dict = {}

        def write(s):
            # The lease as it stands (a plain read, before submit's locks): released by a skip
            # that another tab undid when the pair had no room left, it expired then.
            sent["lease_expires"] = s.scalar(select(Lease.expires_at).where(
                Lease.comparison_id == asg.comparison_id, Lease.annotator_id == self.actor.id))
            sent["now"] = now = self.clock.now()
            return judgments.submit(s, self.settings, actor=self.actor, comparison_id=asg.comparison_id,
                                    shown=shown, strength=strength, a_on_left_shown=asg.a_on_left,
                                    time_spent_ms=self.rng.randrange(500, 30000), now=now)
        t0 = time.perf_counter()
        done = self._guard("submit", lambda: self.db.transact(write))
        self.log.add("submit_s", time.perf_counter() - t0)
        if done is None:
            return False
        self.log.add("submits", {
            "judgment_id": done.judgment_id, "annotator_id": self.actor.id, "comparison_id": asg.comparison_id,
            "is_probe": done.is_probe, "choice": done.choice, "shown": shown, "a_on_left": asg.a_on_left,
            "late": asg.expires_at <= sent["now"] or sent["lease_expires"] is None
                    or sent["lease_expires"] <= sent["now"],
            # The lease ran out while the submit waited for locks (its `now` was read before).
            "expired_in_flight": sent["now"] < asg.expires_at <= self.clock.now()})
        return True

    def skip(self, asg: queue.Assignment) -> None:
        if self._guard("skip", lambda: self.db.transact(lambda s: queue.skip(
                s, actor=self.actor, comparison_id=asg.comparison_id, now=self.clock.now())) or True):
            self.log.add("skips", (self.actor.id, asg.comparison_id))

    def undo(self) -> None:
        undone = self._guard("undo", lambda: self.db.transact(lambda s: judgments.undo_last_action(
            s, self.settings, actor=self.actor, now=self.clock.now())) or False)
        if undone:
            self.log.add("undos", (self.actor.id, undone))

    def run(self, stop: threading.Event) -> None:
        config, rng = self.config, self.rng
        idle = 0
        idle_limit = max(20, int(3 * self.clock.real(config.lease_seconds) / 0.05))
        while not stop.is_set():
            asg = self.load()
            if not asg:
                idle += 1
                if idle > idle_limit:
                    return  # drained for this annotator: they go home
                time.sleep(0.05)
                continue
            idle = 0
            time.sleep(rng.uniform(*config.think_ms) / 1000)
            if rng.random() < config.p_away:
                time.sleep(self.clock.real(config.lease_seconds) * rng.uniform(1.1, 2.0))
            r = rng.random()
            if r < config.p_skip:
                self.skip(asg)
            elif r < config.p_skip + config.p_undo:
                self.undo()
            else:
                shown = rng.choices(PRESSES, PRESS_WEIGHTS)[0]
                strength = rng.choice((None, 1, 2, 3)) if shown in ("left", "right") else None
                if rng.random() < config.p_double:
                    self._double(asg, shown, strength)
                else:
                    self.judge(asg, shown, strength)

    def _double(self, asg, shown, strength) -> None:
        """The same press sent twice at once; exactly one may be saved, unless an undo (in the
        annotator's other tab) withdrew the first and leased the pair back before the second."""
        start = threading.Barrier(2)
        outcomes = []

        def press():
            start.wait()
            outcomes.append(self.judge(asg, shown, strength))
        other = threading.Thread(target=press)
        other.start()
        press()
        other.join()
        with self.log.lock:
            self.log.double_outcomes[sum(outcomes)] += 1
            if sum(outcomes) > 1:
                self.log.double_saved_twice.append((self.actor.id, asg.comparison_id))


def _rewrite_priorities(db: Database, config: SoakConfig, log: Log, done: threading.Event) -> None:
    """The retraining job's promote step, again and again: every open pair's priority in one transaction."""
    rng = np.random.default_rng(config.seed)
    while not done.is_set():
        try:
            with db.read() as s:  # the run's snapshot, taken before training
                ids = np.array(s.scalars(select(Comparison.id).where(
                    Comparison.status == ComparisonStatus.open)).all(), dtype=np.int64)

            def promote(s):
                n = write_priorities(s, ids, rng.random(len(ids)), rng.random(len(ids)), rng.random(len(ids)),
                                     strategy="soak", model_version_id=None)
                time.sleep(config.retrain_hold_ms / 1000)
                return n
            t0 = time.perf_counter()
            db.transact(promote)
            log.rewrite_s.append(time.perf_counter() - t0)
            log.rewrites += 1
        except Exception as exc:
            log.rewrite_errors[type(exc).__name__] += 1
        time.sleep(config.retrain_pause_ms / 1000)


# --------------------------------------------------------------------------- checks


def _majority(votes: Counter) -> Choice | None:
    ranked = votes.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]


def check(db: Database, admin: Actor, log: Log) -> tuple[dict[str, int], dict[str, list]]:
    """The invariants (violation counts) and what users were told, from the database and the log."""
    checks: dict[str, int] = {}
    details: dict[str, list] = defaultdict(list)
    with db.read() as s:
        rows = {j.id: j for j in s.scalars(select(Judgment))}
        comparisons = {c.id: c for c in s.scalars(select(Comparison))}
        leases = s.scalars(select(Lease)).all()
        texts = dict(s.execute(select(Response.id, Response.text)).all())

    sent = {x["judgment_id"]: x for x in log.submits}
    by_pair = defaultdict(set)
    for x in log.submits:
        by_pair[(x["annotator_id"], x["comparison_id"])].add(x["judgment_id"])
    undone = Counter((a, u.comparison_id) for a, u in log.undos if not u.skip)
    stored = defaultdict(set)
    for j in rows.values():
        if j.annotator_id is not None:
            stored[(j.annotator_id, j.comparison_id)].add(j.id)

    lost = [i for i in sent if i not in rows]
    extra = [(k, sorted(stored[k] - by_pair.get(k, set()))) for k in stored if stored[k] - by_pair.get(k, set())]
    wrong = [i for i, x in sent.items() if i in rows and (
        rows[i].a_on_left != x["a_on_left"] or Choice(rows[i].choice) is not x["choice"]
        or rows[i].choice is not judgments.canonical_choice(x["shown"], x["a_on_left"])
        or rows[i].is_probe != x["is_probe"])]
    mismatched_undo = []
    for key in set(by_pair) | set(undone):
        states = Counter(rows[i].state for i in stored.get(key, ()))
        bad_state = any(rows[i].state is JudgmentState.retracted and rows[i].retracted_at is None
                        for i in stored.get(key, ()))
        if (states[JudgmentState.retracted] != undone[key] or states[JudgmentState.superseded]
                or states[JudgmentState.active] != len(by_pair.get(key, ())) - undone[key] or bad_state):
            mismatched_undo.append((key, dict(states), undone[key], len(by_pair.get(key, ()))))
    checks["lost_submits"], details["lost_submits"] = len(lost), lost[:10]
    checks["extra_rows"], details["extra_rows"] = len(extra), extra[:10]
    checks["wrong_side_or_choice"], details["wrong_side_or_choice"] = len(wrong), wrong[:10]
    checks["undo_mismatch"], details["undo_mismatch"] = len(mismatched_undo), mismatched_undo[:10]

    live = defaultdict(list)  # comparison -> live non-probe judgments
    live_probes = Counter()
    for j in rows.values():
        if j.state is JudgmentState.active:
            if j.is_probe:
                live_probes[(j.annotator_id, j.comparison_id)] += 1
            else:
                live[j.comparison_id].append(j)
    def inherited(j, flag: str) -> bool:
        """``flag`` of this judgment or of one it superseded: an undo of a late judgment leases the pair
        back to its annotator unconditionally (they re-judge what they had judged), so the re-judgment
        stands where the late one stood, over the target too."""
        while j is not None:
            if sent.get(j.id, {}).get(flag):
                return True
            j = rows.get(j.supersedes_id)
        return False

    count_bad, status_bad, over_late, over_in_flight, over_bad = [], [], [], [], []
    for c in comparisons.values():
        n = len(live[c.id])
        if c.judgment_count != n:
            count_bad.append((c.id, c.judgment_count, n))
        want = (ComparisonStatus.open if c.is_gold or n < c.overlap_target else ComparisonStatus.complete)
        if c.status is not want:
            status_bad.append((c.id, c.status.value, n, c.overlap_target))
        if not c.is_gold and n > c.overlap_target:
            late = sum(1 for j in live[c.id] if inherited(j, "late"))
            in_flight = sum(1 for j in live[c.id] if inherited(j, "expired_in_flight"))
            over = (over_late if late >= n - c.overlap_target else
                    over_in_flight if late + in_flight >= n - c.overlap_target else over_bad)
            over.append((c.id, n, c.overlap_target, late, in_flight))
    per_annotator = Counter((j.annotator_id, j.comparison_id) for js in live.values() for j in js)
    judged = set(per_annotator)
    stale = [(l.annotator_id, l.comparison_id) for l in leases
             if not l.skipped and not l.is_probe and (l.annotator_id, l.comparison_id) in judged]
    checks["count_mismatch"], details["count_mismatch"] = len(count_bad), count_bad[:10]
    checks["status_mismatch"], details["status_mismatch"] = len(status_bad), status_bad[:10]
    checks["over_target_late"], details["over_target_late"] = len(over_late), over_late[:10]
    checks["over_target_expired_in_flight"] = len(over_in_flight)
    details["over_target_expired_in_flight"] = over_in_flight[:10]
    checks["over_target_unexplained"], details["over_target_unexplained"] = len(over_bad), over_bad[:10]
    checks["two_live_judgments"] = sum(1 for n in per_annotator.values() if n > 1)
    doubled = [k for k, n in live_probes.items() if n > 1]
    checks["two_live_probes"] = len(doubled)
    details["two_live_probes"] = [
        (k, [(j.id, j.state.value, j.is_probe, j.supersedes_id, j.created_at.isoformat(timespec="milliseconds"))
             for j in sorted(rows.values(), key=lambda j: j.id) if (j.annotator_id, j.comparison_id) == k],
         [(a, u) for a, u in log.undos if (a, u.comparison_id) == k]) for k in doubled[:3]]
    checks["stale_leases_on_judged_pairs"], details["stale_leases_on_judged_pairs"] = len(stale), stale[:10]
    undone_pairs = {(a, u.comparison_id) for a, u in log.undos if not u.skip}
    twice = [k for k in log.double_saved_twice if k not in undone_pairs]
    checks["double_press_saved_twice_without_undo"] = len(twice)
    details["double_press_saved_twice_without_undo"] = twice[:10]

    # The export against the votes as the annotators sent them (choices from the log, not the rows).
    expected = {}
    for cid, js in live.items():
        if not js:
            continue
        votes = Counter(sent[j.id]["choice"] if j.id in sent else Choice(j.choice) for j in js)
        winner = _majority(votes)
        if winner is not None:
            expected[cid] = (winner, sum(votes.values()), votes[winner] / sum(votes.values()))
    with db.begin() as s:
        exported = preference_rows(s, actor=admin, filters=ExportFilter(include_ties=True, include_both_bad=True))
    got = {r["comparison_id"]: r for r in exported}
    export_bad = []
    for cid in set(expected) | set(got):
        if cid not in expected or cid not in got:
            export_bad.append((cid, expected.get(cid), cid in got))
            continue
        winner, n, agreement = expected[cid]
        c, r = comparisons[cid], got[cid]
        chosen = texts[c.response_b_id] if winner is Choice.b else texts[c.response_a_id]
        if (r["n_judgments"] != n or abs(r["agreement"] - agreement) > 1e-9 or r["chosen"] != chosen
                or r["is_tie"] != (winner is Choice.tie) or r["is_both_bad"] != (winner is Choice.both_bad)):
            export_bad.append((cid, expected[cid], {k: r[k] for k in ("n_judgments", "agreement")}))
    checks["export_rows"] = len(exported)
    checks["export_mismatch"], details["export_mismatch"] = len(export_bad), export_bad[:10]
    checks["unexpected_exceptions"], details["unexpected_exceptions"] = len(log.unexpected), log.unexpected[:5]
    checks["live_judgments"] = sum(len(js) for js in live.values())
    checks["live_probes"] = sum(live_probes.values())
    checks["pairs_complete"] = sum(1 for c in comparisons.values() if c.status is ComparisonStatus.complete)
    return checks, dict(details)


# --------------------------------------------------------------------------- running


def run_soak(url: str, config: SoakConfig = SoakConfig(), data_dir: Path | None = None) -> SoakResult:
    """Run the soak on the migrated, empty database at ``url``; the invariants' results."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = replace(load_settings(environ={}, data_dir=data_dir or Path(tmp), database_url=url),
                           lease_seconds=config.lease_seconds)
        db = Database(create_db_engine(url))  # the app server's engine, shared by every session
        job_db = Database(create_db_engine(url))  # the retraining process's own
        try:
            admin, actors = _setup(db, settings, config)
            log, clock = Log(), Clock(config.speed)
            tabs = []
            for i, actor in enumerate(actors):
                for t in range(2 if i < config.second_tabs else 1):
                    tabs.append(Tab(db, settings, clock, config, log, actor, random.Random(f"{config.seed}:{i}:{t}")))
            stop, done = threading.Event(), threading.Event()
            job = threading.Thread(target=_rewrite_priorities, args=(job_db, config, log, done))
            threads = [threading.Thread(target=tab.run, args=(stop,)) for tab in tabs]
            t0 = time.perf_counter()
            job.start()
            [t.start() for t in threads]
            deadline = t0 + config.seconds
            for t in threads:
                t.join(timeout=max(0.0, deadline - time.perf_counter()))
            stop.set()
            [t.join() for t in threads]
            wall = time.perf_counter() - t0
            done.set()
            job.join()
            checks, details = check(db, admin, log)
        finally:
            db.dispose()
            job_db.dispose()
    return SoakResult(db.dialect, config, wall, log, checks, details)


def _ms(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if xs else float("nan")


def report(result: SoakResult, out=sys.stdout) -> None:
    """Print the figures and the invariants in a stable, copyable form."""
    c, log = result.config, result.log
    n = len(log.submits)
    print(f"soak[{result.backend}] annotators={c.annotators} tabs={c.annotators + c.second_tabs} pairs={c.pairs} "
          f"gold={c.gold_pairs} lease_s={c.lease_seconds} speed={c.speed:g} wall_s={result.wall_s:.1f} "
          f"judgments={n} probes={sum(1 for x in log.submits if x['is_probe'])} "
          f"late={sum(1 for x in log.submits if x['late'])} "
          f"expired_in_flight={sum(1 for x in log.submits if x['expired_in_flight'])} undos={len(log.undos)} skips={len(log.skips)} "
          f"judgments_per_s={n / result.wall_s:.1f}", file=out)
    print(f"soak[{result.backend}] serve_p50_ms={_ms(log.serve_s, 50):.1f} serve_p95_ms={_ms(log.serve_s, 95):.1f} "
          f"submit_p50_ms={_ms(log.submit_s, 50):.1f} submit_p95_ms={_ms(log.submit_s, 95):.1f} "
          f"rewrites={log.rewrites} rewrite_p50_ms={_ms(log.rewrite_s, 50):.1f} "
          f"rewrite_errors={dict(log.rewrite_errors)} double_presses_saved={dict(log.double_outcomes)}", file=out)
    for (action, message), count in sorted(log.seen.items(), key=lambda kv: -kv[1]):
        print(f"  told {count:5d}x on {action}: {message}", file=out)
    for name, value in result.checks.items():
        verdict = ("FAIL" if value else "ok") if name in SoakResult.DEFECTS else "info"
        print(f"  check {name}={value} {verdict}", file=out)
        for item in result.details.get(name, [])[:3]:
            print(f"    e.g. {item}", file=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database", nargs="?", default="postgresql", help="postgresql, sqlite or a database URL")
    defaults = SoakConfig()
    for name in ("annotators", "second_tabs", "pairs", "gold_pairs", "seconds", "speed", "lease_seconds",
                 "seed", "p_skip", "p_undo", "p_double", "p_away", "probe_rate", "gold_rate"):
        default = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args()
    config = replace(defaults, **{k: v for k, v in vars(args).items() if k != "database"})
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests import this module as bench.soak
    from _pg import scratch_database

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as scratch:
        if args.database == "postgresql":
            url = scratch.enter_context(scratch_database("prefloop_soak", admin_url=PG_ADMIN))
        elif args.database == "sqlite":
            url = f"sqlite:///{Path(tmp) / 'soak.db'}"
        else:
            url = args.database
        migrate.upgrade(url)
        result = run_soak(url, config, data_dir=Path(tmp))
    report(result)
    sys.exit(1 if result.defects else 0)


if __name__ == "__main__":
    main()
