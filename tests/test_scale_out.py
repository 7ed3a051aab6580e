"""Two retraining watchers on one PostgreSQL database (README "Scaling out").

Real ``prefloop retrain --watch`` processes with one shared data folder and the
tiny encoder of ``tests/test_retrain.py``, while annotators judge through the
service layer from this process. What a deployment with two app servers, each
with its watcher, relies on: one run at a time (the advisory lock), each run
recorded and reported once, one model version per trained run and no other,
one promotion per promoting run, priorities from the active model, a killed
watcher's run marked dead and taken over by the other watcher, and SIGTERM
stopping both (one in the middle of a run, marked failed) and leaving no lock
behind. Killing a lone ``--once`` run at each step is
``test_kill_at_each_step_keeps_previous_model``; this file is about live watchers.

Runs take well under a second after the first, so the test freezes a watcher
(SIGSTOP) to catch one in progress before it signals it. Nothing here asserts
on timings; waits have generous limits. About a minute on a 2-core machine.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from annotate import campaign, judgments, locks, queue, retrain
from annotate.db import Database, create_db_engine
from annotate.errors import PrefloopError
from annotate.models import Comparison, ComparisonStatus, Judgment, JudgmentState, ModelVersion, TrainingRun
from annotate.settings import load_settings
from rm.acquisition import get_strategy
from tests.factories import make_user
from tests.test_retrain import (  # noqa: F401 - tiny_encoder is a fixture
    REPO,
    _artifact_dirs,
    _cli_env,
    _wait_for,
    add_pairs,
    tiny_encoder,
)

pytestmark = pytest.mark.postgres

SUMMARY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+\[(\d+)\] retrain (\w+) \(run (\d+)\)", re.M)
"""The first line of a recorded run's summary in a watcher's log, after its time, host and process id."""


class Watcher:
    """``prefloop retrain --watch`` in its own process, its output in a file."""

    def __init__(self, settings, log: Path):
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "annotate.cli", "retrain", "--watch",
                                          "--poll-seconds", "1"], cwd=REPO,
                                         env=_cli_env(settings), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def runs(self) -> list[tuple[str, int]]:
        """``(status, run id)`` of each run this watcher reported (its lines name its own process)."""
        found = SUMMARY.findall(self.output())
        assert {int(pid) for pid, _, _ in found} <= {self.pid}, found
        return [(status, int(run)) for _, status, run in found]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


class Annotators(threading.Thread):
    """Annotators judging one pair after another through the service layer, as the page does."""

    def __init__(self, db: Database, settings, actors):
        super().__init__(name="annotators", daemon=True)
        self.db, self.settings, self.actors = db, settings, actors
        self.halt = threading.Event()
        self.submitted = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            turn = 0
            while not self.halt.is_set():
                actor = self.actors[turn % len(self.actors)]
                turn += 1

                def serve(session, actor=actor):
                    return queue.next_comparison(session, self.settings,
                                                 campaign.get_options(session, self.settings), actor=actor)

                shown = self.db.transact(serve)
                if shown is None:
                    self.halt.wait(0.4)
                    continue
                try:
                    self.db.transact(lambda s, a=actor, c=shown.comparison_id: judgments.submit(
                        s, self.settings, actor=a, comparison_id=c, shown="left"))
                except PrefloopError:
                    continue  # the pair went away meanwhile (the page says so and serves the next)
                self.submitted += 1
                self.halt.wait(0.4)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


class RunMonitor(threading.Thread):
    """Samples how many runs the database says are running at once."""

    def __init__(self, db: Database):
        super().__init__(name="run-monitor", daemon=True)
        self.db = db
        self.halt = threading.Event()
        self.most_running = 0
        self.samples = 0

    def run(self) -> None:
        while not self.halt.wait(0.05):
            with self.db.read() as s:
                running = s.scalar(select(func.count(TrainingRun.id)).where(TrainingRun.status == "running"))
            self.most_running = max(self.most_running, int(running))
            self.samples += 1


def _runs(db) -> list[TrainingRun]:
    with db.read() as s:
        return list(s.scalars(select(TrainingRun).order_by(TrainingRun.id)))


def _finished(db) -> list[TrainingRun]:
    return [r for r in _runs(db) if r.status in retrain.FINISHED]


LATE = ("score", "promote")


def _mid(step: str) -> bool:
    """A step in the middle of a run: past "start" (the watcher announces a run, "retraining: ...", after
    committing its row at "start", so a process stopped there had not said it yet: under load a CI run
    caught one in that gap), and two steps or more before its end."""
    return step != "start" and step not in LATE


def _frozen_mid_run(db, watchers: dict[int, Watcher]) -> tuple[Watcher, TrainingRun]:
    """Stop (SIGSTOP) the watcher that has a run in progress, caught past its start and two steps or more
    before its end (``_mid``).

    Runs take well under a second here, so a signal sent on seeing one could land
    after it committed. Frozen, the run is checked again: still running, its
    recorded step before ``score``, it is mid-run whatever is sent next, and a
    SIGTERM stops it at a step boundary still to come (the process may have
    begun the step after the recorded one, never the final ``promote``).
    """
    end = time.monotonic() + 180
    while time.monotonic() < end:
        run = next((r for r in _runs(db) if r.status == "running" and r.pid in watchers and _mid(r.step)), None)
        if run is None:
            time.sleep(0.02)
            continue
        os.kill(run.pid, signal.SIGSTOP)
        time.sleep(0.3)  # a commit already sent reaches the server meanwhile
        with db.read() as s:
            again = s.get(TrainingRun, run.id)
        if again.status == "running" and _mid(again.step):
            return watchers[run.pid], again
        os.kill(run.pid, signal.SIGCONT)
    raise AssertionError("no run caught in progress")


def test_two_watchers_share_one_database(pg_clean_url, tmp_path, tiny_encoder):  # noqa: F811
    """Two watchers retrain in turn while annotators judge; one is killed (-9) mid-run and the other
    takes over; a replacement joins; SIGTERM then stops both, one of them mid-run."""
    settings = load_settings(environ={}, data_dir=tmp_path / "data", database_url=pg_clean_url, env="test",
                             encoder_path=str(tiny_encoder), cold_start=0, torch_threads=1)
    db = Database(create_db_engine(pg_clean_url))
    watchers: list[Watcher] = []
    monitor = RunMonitor(db)
    annotators = None
    try:
        with db.begin() as s:
            add_pairs(s, 0, 60, judged=True)
            add_pairs(s, 1000, 200, judged=False)
            admin = make_user(s, "boss", "admin")
            actors = [make_user(s, f"ann{i}") for i in range(4)]
            campaign.update_options(s, settings, actor=admin, retrain_every_labels=4, retrain_every_minutes=600,
                                    gold_rate=0.0, probe_rate=0.0)
        monitor.start()
        first, second = (Watcher(settings, tmp_path / f"watcher-{n}.log") for n in (1, 2))
        watchers += [first, second]
        annotators = Annotators(db, settings, actors)
        annotators.start()

        # Both are due at once (60 labels, no run yet); judgments keep arriving: they retrain in turn.
        _wait_for(lambda: len(_finished(db)) >= 3 or annotators.error, 240)
        assert annotators.error is None, repr(annotators.error)

        # kill -9 the watcher in the middle of a run: the other takes over.
        victim, killed_run = _frozen_mid_run(db, {first.pid: first, second.pid: second})
        victim.proc.send_signal(signal.SIGKILL)
        assert victim.proc.wait(30) == -signal.SIGKILL
        survivor = second if victim is first else first
        _wait_for(lambda: any(r.id > killed_run.id for r in _runs(db)), 180)
        third = Watcher(settings, tmp_path / "watcher-3.log")  # the killed one's replacement
        watchers.append(third)
        _wait_for(lambda: [r for r in _finished(db) if r.id > killed_run.id], 180)
        takeover = [r for r in _finished(db) if r.id > killed_run.id][0]
        with db.read() as s:
            dead = s.get(TrainingRun, killed_run.id)
        assert dead.status == "failed", (dead.status, dead.error)
        assert f"process died at step {killed_run.step} (pid {victim.pid}" in dead.error
        assert takeover.pid == survivor.pid and takeover.counts.get("dead_runs_marked") == 1

        # SIGTERM to both live watchers while one of them is in the middle of a run.
        _wait_for(lambda: "retrain watcher started" in third.output()
                  and any(r.id > takeover.id for r in _finished(db)), 180)
        runner, stopped_run = _frozen_mid_run(db, {survivor.pid: survivor, third.pid: third})
        for watcher in (survivor, third):
            watcher.proc.send_signal(signal.SIGTERM)
        runner.proc.send_signal(signal.SIGCONT)
        assert [w.proc.wait(120) for w in (survivor, third)] == [0, 0], [w.output() for w in (survivor, third)]
        annotators.halt.set()
        annotators.join(30)
        assert annotators.error is None, repr(annotators.error)
        assert annotators.submitted >= 8
        monitor.halt.set()
        monitor.join(10)

        for watcher in (survivor, third):
            assert watcher.output().rstrip().endswith("retrain watcher stopped"), watcher.output()
        assert not locks.is_held(db, retrain.LOCK_NAME)
        runs = _runs(db)
        assert [r.id for r in runs if r.status == "running"] == []
        failed = [(r.id, r.error) for r in runs if r.status == "failed"]
        assert failed[0] == (killed_run.id, dead.error) and [r for r, _ in failed] == [killed_run.id, stopped_run.id]
        assert failed[1][1].startswith("Stopped at step ") and "stopped by signal before step" in failed[1][1]

        # One run at a time: never two running at once, each one over before the next began.
        assert monitor.samples > 0 and monitor.most_running == 1
        for before, after in zip(runs, runs[1:]):
            assert before.finished_at <= after.started_at, (before.id, after.id)
        # Each run reported once, by the watcher that ran it; the killed one by nobody.
        reported = [run for w in watchers for _, run in w.runs()]
        assert sorted(reported) == [r.id for r in runs if r.id != killed_run.id]
        for watcher in watchers:
            assert all(next(r for r in runs if r.id == run).pid == watcher.pid for _, run in watcher.runs())
            assert watcher.output().count("retraining:") == len(watcher.runs()) + (watcher is victim)
            assert "skipped: another retrain is running" not in watcher.output()

        # Another process retrains afterwards: nothing holds the lock, no judgment was lost.
        last = retrain.run_once(settings, db=db)
        assert last.status in ("succeeded", "rejected"), last.summary()
        runs = _runs(db)
        with db.read() as s:
            labels = s.scalar(select(func.count(Judgment.id)).where(Judgment.state == JudgmentState.active,
                                                                    Judgment.is_probe.is_(False)))
            versions = list(s.scalars(select(ModelVersion).order_by(ModelVersion.id)))
            open_pairs = s.execute(select(Comparison.priority_model_version_id, Comparison.priority_strategy)
                                   .where(Comparison.status == ComparisonStatus.open)).all()
        assert runs[-1].counts["n_judgments"] == labels == 60 + annotators.submitted

        # One model version per trained run, none for the others; every artifact on the shared disk, no other.
        trained = [r for r in runs if r.status in ("succeeded", "rejected")]
        assert sorted(v.training_run_id for v in versions) == [r.id for r in trained]
        assert _artifact_dirs(settings) == sorted(Path(v.artifact_path).name for v in versions)
        # Promoted once per promoting run, in run order; the active one is the latest promoted.
        by_run = {v.training_run_id: v for v in versions}
        promoted = [by_run[r.id] for r in trained if r.status == "succeeded"]
        assert all(v.promoted and v.promoted_at is not None for v in promoted)
        assert not any(by_run[r.id].promoted for r in trained if r.status == "rejected")
        assert [v.promoted_at for v in promoted] == sorted(v.promoted_at for v in promoted)
        assert [v.id for v in versions if v.is_active] == [promoted[-1].id]
        # Every finished trained run wrote the priorities of the open pairs, with the model active then.
        assert all(r.counts.get("n_priorities_written", 0) > 0 for r in trained)
        assert open_pairs and {mv for mv, _ in open_pairs} == {promoted[-1].id}
        # Ordered by the campaign's strategy, held-out prompts' pairs at random.
        assert {strategy for _, strategy in open_pairs} == {str(get_strategy("default")), retrain.HELD_OUT_STRATEGY}
        assert open_pairs[0][1] not in (None, "random")
    finally:
        if annotators is not None:
            annotators.halt.set()
        monitor.halt.set()
        for watcher in watchers:
            watcher.stop()
        db.dispose()
