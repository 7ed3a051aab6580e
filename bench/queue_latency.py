"""Queue latency with a large open pool: next_comparison + submit on SQLite and PostgreSQL.

    python bench/queue_latency.py [--pairs 1000000] [--calls 200]

Seeds N open comparisons with bulk inserts into scratch databases (dropped
afterwards), then times serving and judging pairs one by one, the way the
annotation page does.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from sqlalchemy import insert

from annotate import judgments, migrate, queue
from annotate.accounts import Actor, create_user
from annotate.campaign import get_options
from annotate.db import Database, create_db_engine
from annotate.models import Comparison, Prompt, Response, Role
from annotate.settings import load_settings
from _pg import scratch_database, settle


def seed(db: Database, n: int, chunk: int = 50_000) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        with db.begin() as s:
            s.execute(insert(Prompt), [{"id": i + 1, "content_hash": f"p{i}", "text": f"prompt {i}"}
                                       for i in range(start, stop)])
            s.execute(insert(Response), [{"id": 2 * i + 1 + k, "prompt_id": i + 1, "content_hash": f"r{i}{k}",
                                          "text": f"response {k} to {i}"} for i in range(start, stop) for k in (0, 1)])
            pr = rng.random(stop - start)
            s.execute(insert(Comparison), [{"id": i + 1, "prompt_id": i + 1, "response_a_id": 2 * i + 1,
                                            "response_b_id": 2 * i + 2, "overlap_target": 1,
                                            "priority": float(pr[i - start])} for i in range(start, stop)])
    settle(db)


def bench(db: Database, settings, calls: int) -> dict[str, float]:
    with db.begin() as s:
        users = [create_user(s, f"bench{i}", "bench-password", "annotator", system=True) for i in range(3)]
        actors = [Actor(u.id, u.username, Role.annotator) for u in users]
        options = replace(get_options(s, settings), gold_rate=0.0, probe_rate=0.0)
    serve, submit = [], []
    for i in range(calls):
        actor = actors[i % len(actors)]
        t0 = time.perf_counter()
        with db.begin() as s:
            asg = queue.next_comparison(s, settings, options, actor=actor)
        t1 = time.perf_counter()
        with db.begin() as s:
            judgments.submit(s, settings, actor=actor, comparison_id=asg.comparison_id, shown="left")
        t2 = time.perf_counter()
        serve.append(t1 - t0)
        submit.append(t2 - t1)
    q = lambda xs, p: sorted(xs)[int(p * (len(xs) - 1))] * 1000
    return {"serve_median_ms": statistics.median(serve) * 1000, "serve_p95_ms": q(serve, 0.95),
            "submit_median_ms": statistics.median(submit) * 1000, "submit_p95_ms": q(submit, 0.95)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, scratch_database("prefloop_bench_queue") as pg_url:
        sqlite_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        for label, url in (("sqlite", sqlite_url), ("postgresql", pg_url)):
            migrate.upgrade(url)
            db = Database(create_db_engine(url))
            settings = load_settings(environ={}, data_dir=Path(tmp), database_url=url)
            t0 = time.perf_counter()
            seed(db, args.pairs)
            seeded = time.perf_counter() - t0
            r = bench(db, settings, args.calls)
            print(f"queue[{label}] open_pairs={args.pairs} seed_s={seeded:.1f} calls={args.calls} "
                  + " ".join(f"{k}={v:.1f}" for k, v in r.items()))
            db.dispose()


if __name__ == "__main__":
    main()
