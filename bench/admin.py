"""Time the admin console on PostgreSQL with a million judgments and 50 annotators.

Creates a scratch database (dropped at the end), migrates it, seeds it with
``INSERT ... SELECT generate_series`` (no Python loops), counts the seed into the
admin rollups (``annotate.rollups.rebuild``, what migration 0003 does), then times the
overview, annotator-table and model-health service calls, and a full AppTest
render of the overview and annotators pages.

    .venv/bin/python bench/admin.py                      # 1,000,000 judgments
    .venv/bin/python bench/admin.py --judgments 100000   # quicker
    PREFLOOP_BENCH_PG_URL=postgresql+psycopg://postgres@host:5432/postgres .venv/bin/python bench/admin.py

Prints one ``name: value`` line per figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from annotate import dashboard, migrate, rollups  # noqa: E402
from annotate.accounts import Actor  # noqa: E402
from annotate.db import Database, create_db_engine  # noqa: E402
from annotate.models import Role  # noqa: E402
from annotate.settings import load_settings  # noqa: E402
from _pg import reset_sequences, scratch_database  # noqa: E402

N_ANNOTATORS = 50
OVERLAP = 3
PROBE_SHARE = 0.01
GOLD_COMPARISONS = 2000
OPEN_COMPARISONS = 50_000


def seed(conn, n_judgments: int) -> dict[str, int]:
    """Fill an empty migrated database. Deterministic (hash-like arithmetic on the row number)."""
    n_probes = int(n_judgments * PROBE_SHARE)
    n_judged = (n_judgments - n_probes) // OVERLAP
    n_cmp = n_judged + OPEN_COMPARISONS
    steps = [
        ("users", f"""
            INSERT INTO users (username, password_hash, role, active, failed_logins, created_at)
            SELECT CASE WHEN g = 0 THEN 'admin' ELSE 'annotator' || g END, 'x',
                   CASE WHEN g = 0 THEN 'admin' ELSE 'annotator' END, true, 0, now()
            FROM generate_series(0, {N_ANNOTATORS}) g ORDER BY g"""),
        ("prompts", f"""
            INSERT INTO prompts (id, content_hash, text, created_at)
            SELECT g, md5('p' || g), 'Prompt ' || g || ': ' || repeat('q', (50 + (g * 13) % 400)::int), now()
            FROM generate_series(1::bigint, {n_cmp}) g"""),
        ("responses", f"""
            INSERT INTO responses (id, prompt_id, content_hash, text, n_chars, created_at)
            SELECT g, (g + 1) / 2, md5('r' || g), repeat('w', n), n, now()
            FROM (SELECT g, (100 + (g * 7919) % 1400)::int AS n
                  FROM generate_series(1::bigint, {2 * n_cmp}) g) s"""),
        ("comparisons", f"""
            INSERT INTO comparisons (id, prompt_id, response_a_id, response_b_id, status, overlap_target,
                                     judgment_count, is_gold, gold_choice, priority, priority_score, model_p_a,
                                     created_at)
            SELECT g, g, 2 * g - 1, 2 * g,
                   CASE WHEN g <= {n_judged} AND g > {GOLD_COMPARISONS} THEN 'complete' ELSE 'open' END,
                   {OVERLAP}, CASE WHEN g <= {n_judged} THEN {OVERLAP} ELSE 0 END,
                   g <= {GOLD_COMPARISONS}, CASE WHEN g <= {GOLD_COMPARISONS} THEN 'a' END,
                   ((g * 7919) % 1000) / 1000.0, ((g * 104729) % 10007) / 10007.0,
                   ((g * 2654435761) % 1000) / 1000.0, now()
            FROM generate_series(1::bigint, {n_cmp}) g"""),
        ("judgments", f"""
            INSERT INTO judgments (comparison_id, annotator_id, source, choice, flags, a_on_left, time_spent_ms,
                                   is_probe, was_gold, state, created_at, acquisition_strategy)
            SELECT c, 2 + (c * 7 + k * 17) % {N_ANNOTATORS}, 'annotator',
                   CASE WHEN h < 45 THEN 'a' WHEN h < 85 THEN 'b' WHEN h < 95 THEN 'tie' ELSE 'both_bad' END,
                   '[]', (g % 2) = 0, 3000 + (g * 7919) % 60000, false, c <= {GOLD_COMPARISONS}, 'active',
                   now() - ((g * 31) % (30 * 24 * 60)) * interval '1 minute',
                   CASE WHEN c % 10 = 0 THEN 'random (held-out)' ELSE 'bald+diverse' END
            FROM (SELECT g, (g - 1) / {OVERLAP} + 1 AS c, (g - 1) % {OVERLAP} AS k, (g * 2654435761) % 100 AS h
                  FROM generate_series(1::bigint, {n_judged * OVERLAP}) g) s"""),
        ("probes", f"""
            INSERT INTO judgments (comparison_id, annotator_id, source, choice, flags, a_on_left, time_spent_ms,
                                   is_probe, was_gold, state, created_at)
            SELECT c, 2 + (c * 7) % {N_ANNOTATORS}, 'annotator',
                   CASE WHEN (g * 40503) % 100 < 50 THEN 'a' ELSE 'b' END, '[]', (g % 2) = 1,
                   3000 + (g * 6151) % 60000, true, false, 'active', now() - (g % 1440) * interval '1 minute'
            FROM (SELECT g, {GOLD_COMPARISONS} + 1 + (g * 97) % ({n_judged} - {GOLD_COMPARISONS}) AS c
                  FROM generate_series(1::bigint, {n_probes}) g) s"""),
        ("sequences", reset_sequences),
        ("model", """
            INSERT INTO model_versions (artifact_path, encoder_id, is_active, promoted, metrics, n_train, n_test,
                                        created_at)
            VALUES ('/bench/v1', 'bench', false, true, '{"accuracy": 0.61, "ensemble_prob_std": 0.09}', 5000, 500,
                    now() - interval '2 days'),
                   ('/bench/v2', 'bench', true, true, '{"accuracy": 0.68, "ece": 0.04, "ensemble_prob_std": 0.07,
                     "calibration": [{"lower": 0.0, "upper": 0.5, "predicted": 0.3, "observed": 0.33, "count": 400},
                                     {"lower": 0.5, "upper": 1.0, "predicted": 0.7, "observed": 0.66, "count": 400}]}',
                    50000, 5000, now() - interval '1 day')"""),
        ("training_run", """
            INSERT INTO training_runs (status, step, metrics, counts, timings, started_at, finished_at)
            VALUES ('succeeded', 'promote', '{}',
                    json_build_object('max_judgment_id', (SELECT max(id) - 500 FROM judgments)), '{}',
                    now() - interval '20 minutes', now() - interval '18 minutes');
            UPDATE model_versions SET training_run_id = (SELECT max(id) FROM training_runs) WHERE is_active;
            UPDATE comparisons SET priority_model_version_id = (SELECT id FROM model_versions WHERE is_active)"""),
    ]
    timings = {}
    for name, sql in steps:
        start = time.perf_counter()
        if callable(sql):
            sql(conn)
        else:
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(text(statement))
        timings[name] = time.perf_counter() - start
    counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
              for t in ("users", "prompts", "comparisons", "judgments")}
    return {**counts, **{f"seed_{k}_s": v for k, v in timings.items()}}


def best_of(fn, repeat: int) -> tuple[float, float]:
    """(best, median) wall time in seconds over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def render_pages(url: str, admin: Actor, repeat: int) -> dict[str, tuple[float, float]]:
    """Full AppTest renders of the overview and annotators pages (their default periods) against ``url``.

    ``first``: a run that computes the figures (after a warm-up run and clearing the cache);
    ``cached``: later reruns, which the pages serve
    from ``st.cache_data`` for 30-60 s.
    """
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["PREFLOOP_DATABASE_URL"] = url
    os.environ["PREFLOOP_ENV"] = "test"
    out = {}
    for page in ("overview.py", "annotators.py"):
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=600)
        at.session_state["actor"] = admin
        at.run()
        at.switch_page(str(ROOT / "annotate" / "ui" / "pages" / page))
        at.run()  # warm-up: imports (altair, pandas, scipy) happen once per process
        st.cache_data.clear()
        start = time.perf_counter()
        at.run()
        first = time.perf_counter() - start
        if at.exception:
            raise RuntimeError(f"{page}: {at.exception}")
        out[f"{page.removesuffix('.py')}_first"] = (first, first)
        out[f"{page.removesuffix('.py')}_cached"] = best_of(at.run, repeat)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judgments", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="do not drop the scratch database (prints its URL)")
    parser.add_argument("--no-render", action="store_true", help="skip the AppTest page renders")
    args = parser.parse_args(argv)

    with scratch_database("prefloop_bench_admin", keep=args.keep) as url:
        name = make_url(url).database
        migrate.upgrade(url)
        engine = create_db_engine(url)
        with engine.begin() as conn:
            start = time.perf_counter()
            figures = seed(conn, args.judgments)
            figures["seed_total_s"] = time.perf_counter() - start
            # The seed writes raw SQL, which the ORM events do not see: count it the way migration 0003 does.
            start = time.perf_counter()
            rollups.rebuild(conn)
            figures["seed_rollups_s"] = time.perf_counter() - start
        # A database in service has been vacuumed (visibility map set, statistics fresh).
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            start = time.perf_counter()
            conn.execute(text("VACUUM ANALYZE"))
            figures["seed_vacuum_analyze_s"] = time.perf_counter() - start
        db = Database(engine)
        settings = load_settings(environ={}, database_url=url, env="test")
        with db.read() as session:
            admin_id = session.execute(text("SELECT id FROM users WHERE username = 'admin'")).scalar_one()
        admin = Actor(id=admin_id, username="admin", role=Role.admin)

        import scipy.stats  # noqa: F401 - imported once per server process, not per request

        def call(fn):
            def run():
                with db.read() as session:
                    return fn(session)
            return run

        from annotate.models import utcnow

        day_ago, week_ago = utcnow() - timedelta(days=1), utcnow() - timedelta(days=7)
        timings = {
            "overview_24h": best_of(call(lambda s: dashboard.overview(s, settings, actor=admin)), args.repeat),
            "annotator_table_24h": best_of(call(lambda s: dashboard.annotator_table(s, actor=admin, since=day_ago)),
                                           args.repeat),
            "annotator_table_7d": best_of(call(lambda s: dashboard.annotator_table(s, actor=admin,
                                                                                   since=week_ago)), args.repeat),
            "annotator_table_all_time": best_of(call(lambda s: dashboard.annotator_table(s, actor=admin)),
                                                args.repeat),
            "model_health": best_of(call(lambda s: dashboard.model_health(s, actor=admin)), args.repeat),
        }
        # Model health's fresh labels when the active model's run read none of the judgments (a model
        # promoted long ago while retraining kept failing): every judgment is a candidate.
        with db.begin() as session:
            session.execute(text("UPDATE training_runs SET counts = json_build_object('max_judgment_id', 0)"))
        timings["model_health_all_fresh"] = best_of(call(lambda s: dashboard.model_health(s, actor=admin)),
                                                    args.repeat)
        with db.read() as session:
            fresh = dashboard.model_health(session, actor=admin).fresh
        figures["fresh"] = (fresh.random_n, fresh.chosen_n)
        if not args.no_render:
            for page, t in render_pages(url, admin, args.repeat).items():
                timings[f"apptest_render_{page}"] = t
        with db.read() as session:
            report = dashboard.annotator_table(session, actor=admin)
        db.dispose()

        print(f"database: PostgreSQL scratch {name}")
        print(f"cpus: {os.cpu_count()}")
        print(f"load_average_1m_at_end: {os.getloadavg()[0]:.1f}")
        for key in ("users", "prompts", "comparisons", "judgments"):
            print(f"rows_{key}: {figures[key]}")
        print(f"seed_total_s: {figures['seed_total_s']:.1f}")
        print(f"rollups_rebuild_s: {figures['seed_rollups_s']:.1f}")
        for key, (best, median) in timings.items():
            print(f"{key}_best_s: {best:.3f}")
            print(f"{key}_median_s: {median:.3f}")
        print(f"annotators_in_table: {len(report.annotators)}")
        print(f"fresh_labels_all_fresh (random order, chosen): {figures['fresh']}")
        alpha = report.alpha_ordinal
        print(f"alpha_ordinal: {alpha:.4f}" if alpha is not None else "alpha_ordinal: none")
        if args.keep:
            print(f"kept: {url}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
