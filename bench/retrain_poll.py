"""What one poll of the retraining watcher costs with a big judgments table, on SQLite and PostgreSQL.

    python bench/retrain_poll.py [--judgments 1000000] [--repeats 15] [--backends sqlite,postgres]

Seeds scratch databases (dropped afterwards) with bulk inserts: ``--judgments``
judgments by 50 annotators, four per comparison (3% of them swapped-repeat
probes, 5% superseded by a revision), the prompts, responses and comparisons
they need, an active model and the last finished run as the job records it
(:func:`record_finished_run`). Then 20 judgments arrive after that run (fewer
than the watcher waits for), and it times, median of ``--repeats`` after one
warm-up:

- ``poll``: what the watch loop runs at every poll (``retrain.due`` in one read
  transaction), the same rule the admin overview's "Next retrain" line runs
  (``check_due``);
- its parts: ``new_judgments``, ``new_pairs``, ``failures`` (``_failures_in_a_row``);
- ``run_alive``: the lock check the loop adds when a run is due;
- ``first_poll``: the first poll in this process after a run, which counts the
  judgments at or below the run's largest id once (those that committed late);
- ``count_all_judgments``: the count of the whole table that every poll ran
  before (the code this script first measured, at commit f68a613), timed
  here under the same load for reference.

Then 10 open pairs arrive, which the active model has not scored: the poll
(now due) and ``new_pairs``, which then also counts the labels for the cold
start, are timed again.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, insert, select

from annotate import campaign, migrate, retrain
from annotate.db import Database, create_db_engine
from annotate.models import (
    Comparison,
    Judgment,
    ModelVersion,
    Prompt,
    Response,
    TrainingRun,
    User,
    utcnow,
)
from annotate.settings import load_settings
from _pg import scratch_database, settle
ANNOTATORS = 50
OVERLAP = 4


def seed(db: Database, n_judgments: int, chunk: int = 50_000) -> None:
    """Bulk-insert users, prompts, responses, comparisons and ``n_judgments`` judgments."""
    import numpy as np

    rng = np.random.default_rng(0)
    n_pairs = -(-n_judgments // OVERLAP)
    with db.begin() as s:
        s.execute(insert(User), [{"id": u + 1, "username": f"bench{u}", "password_hash": "x", "role": "annotator"}
                                 for u in range(ANNOTATORS)])
    for start in range(0, n_pairs, chunk):
        stop = min(n_pairs, start + chunk)
        with db.begin() as s:
            s.execute(insert(Prompt), [{"id": i + 1, "content_hash": f"p{i}", "text": f"prompt {i}"}
                                       for i in range(start, stop)])
            s.execute(insert(Response), [{"id": 2 * i + 1 + k, "prompt_id": i + 1, "content_hash": f"r{i}-{k}",
                                          "text": f"response {k} to {i}"} for i in range(start, stop) for k in (0, 1)])
            s.execute(insert(Comparison), [{"id": i + 1, "prompt_id": i + 1, "response_a_id": 2 * i + 1,
                                            "response_b_id": 2 * i + 2, "overlap_target": OVERLAP,
                                            "status": "complete", "judgment_count": OVERLAP,
                                            "priority": float(rng.random())} for i in range(start, stop)])
    jid = 0
    for start in range(0, n_judgments, chunk):
        stop = min(n_judgments, start + chunk)
        u = rng.random(stop - start)
        rows = []
        for j in range(start, stop):
            pair, k = divmod(j, OVERLAP)
            r = u[j - start]
            jid += 1
            rows.append({"id": jid, "comparison_id": pair + 1, "annotator_id": (pair + k) % ANNOTATORS + 1,
                         "source": "annotator", "choice": "a" if r < 0.5 else "b", "flags": [],
                         "is_probe": bool(r < 0.03),
                         "state": "superseded" if 0.03 <= r < 0.08 else "active"})
        with db.begin() as s:
            s.execute(insert(Judgment), rows)
    settle(db)


def record_finished_run(db: Database) -> None:
    """An active model and the last finished run, recorded with the job's own functions."""
    with db.read() as s:
        if db.dialect == "postgresql":
            s.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        max_id, seen = retrain.judgment_marks(s)
        max_comparison = s.scalar(select(func.max(Comparison.id)))
    with db.begin() as s:
        run = TrainingRun(status="running", step="promote", started_at=utcnow() - timedelta(seconds=30))
        s.add(run)
        s.flush()
        s.add(ModelVersion(artifact_path="models/bench", encoder_id="bench", is_active=True, promoted=True,
                           training_run_id=run.id))
        retrain._finish(s, run.id, "succeeded", {"max_judgment_id": max_id, "judgments_seen": seen,
                                                 "max_comparison_id": int(max_comparison)})


def arrive(db: Database, n_judgments: int, n_pairs: int) -> None:
    """Judgments and open pairs that arrive after the last finished run (below the watcher's thresholds)."""
    with db.begin() as s:
        top = s.scalar(select(func.max(Comparison.id)))
        for i in range(n_pairs):
            p = Prompt(content_hash=f"new{i}", text=f"new prompt {i}")
            s.add(p)
            s.flush()
            a = Response(prompt_id=p.id, content_hash=f"new{i}a", text="a")
            b = Response(prompt_id=p.id, content_hash=f"new{i}b", text="b")
            s.add_all([a, b])
            s.flush()
            s.add(Comparison(prompt_id=p.id, response_a_id=a.id, response_b_id=b.id, overlap_target=1,
                             priority=0.5))
        for i in range(n_judgments):  # revisions by annotators of pairs they judged: no new active duplicate
            s.add(Judgment(comparison_id=top - i, annotator_id=(top - i - 1) % ANNOTATORS + 1, choice="a",
                           state="superseded"))


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: plans, caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def bench(db: Database, settings, repeats: int) -> dict[str, float]:
    started = utcnow() - timedelta(minutes=1)
    out = {}

    def poll():
        with db.read() as s:
            return retrain.due(s, settings, since=started)

    def part(f):
        def run():
            with db.read() as s:
                return f(s)
        return run

    def pairs(s):
        return retrain.new_pairs(s, campaign.get_options(s, settings))

    def count_all():  # what every poll ran before: the whole judgments table
        with db.read() as s:
            return s.execute(select(func.count(Judgment.id).filter(Judgment.id > 0), func.count(Judgment.id))
                             .where(Judgment.is_probe.is_(False))).one()

    arrive(db, 20, 0)
    idle = poll()  # also the first poll after the run: it counts the late judgments once, then keeps that
    out["poll_ms"] = median_ms(poll, repeats)
    out["first_poll_ms"] = median_ms(lambda: (retrain._LATE.clear(), poll()), repeats)
    out["count_all_judgments_ms"] = median_ms(count_all, repeats)
    out["new_judgments_ms"] = median_ms(part(retrain.new_judgments), repeats)
    out["new_pairs_ms"] = median_ms(part(pairs), repeats)
    out["failures_ms"] = median_ms(part(retrain._failures_in_a_row), repeats)
    out["run_alive_ms"] = median_ms(lambda: retrain.run_alive(db), repeats)
    # Open pairs the active model has not scored: new_pairs also counts the labels (the cold start).
    arrive(db, 0, 10)
    fired = poll()
    out["poll_with_new_pairs_ms"] = median_ms(poll, repeats)
    out["new_pairs_with_new_pairs_ms"] = median_ms(part(pairs), repeats)
    return out, idle, fired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judgments", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"# bench/retrain_poll.py host={platform.node()} cpus={os.cpu_count()} load1={load[0]:.2f} "
          f"judgments={args.judgments} repeats={args.repeats}", flush=True)
    with tempfile.TemporaryDirectory(prefix="prefloop-bench-") as tmp, contextlib.ExitStack() as scratch:
        for backend in args.backends.split(","):
            if backend == "postgres":
                url = scratch.enter_context(scratch_database("prefloop_bench_poll"))
            elif backend == "sqlite":
                url = f"sqlite:///{Path(tmp) / 'bench.db'}"
            else:
                parser.error(f"unknown backend {backend!r}: sqlite or postgres")
            migrate.upgrade(url)
            db = Database(create_db_engine(url))
            settings = load_settings(environ={}, data_dir=Path(tmp) / backend, database_url=url, env="test")
            try:
                t0 = time.perf_counter()
                seed(db, args.judgments)
                seeded = time.perf_counter() - t0
                record_finished_run(db)
                r, idle, fired = bench(db, settings, args.repeats)
            finally:
                db.dispose()
            print(f"poll[{backend}] judgments={args.judgments} seed_s={seeded:.1f} "
                  + " ".join(f"{k}={v:.1f}" for k, v in r.items())
                  + f" idle={idle} with_new_pairs={fired}", flush=True)


if __name__ == "__main__":
    main()
