"""How ``prefloop export`` scales: rows/s and peak RSS per backend, size and format.

    .venv/bin/python bench/export_scale.py                                  # 100k and 1M judgments, both backends
    .venv/bin/python bench/export_scale.py --judgments 100000 --backends sqlite
    .venv/bin/python bench/export_scale.py --formats trl-jsonl,page-trl-jsonl

For each backend and size it seeds a scratch database (a temporary SQLite file,
a PostgreSQL database dropped at the end) with bulk inserts, the way
``bench/retrain_poll.py`` does: ``--judgments`` judgments on 0.3 times as
many pairs (1M judgments: 300k pairs), three votes per pair by 50
annotators, plus 5% revisions (superseded rows that the active ones replace)
and 5% probes; 10% of the prompts are chats, so preference exports are
conversational; prompts are 50-600 characters, responses 100-1,500.

Each export then runs in a fresh Python process (``--child``), so its peak
RSS (``ru_maxrss``) is that export's alone. Formats are the CLI's
(``trl-jsonl``, ``trl-parquet``, ``datasets``, ``judgments-csv``,
``judgments-jsonl``, ``judgments-parquet``: ``write_preferences`` /
``write_judgments`` to a file), and ``page-*``: what the admin Export page's
download buttons call (``export.download``: the whole file as bytes). File formats run as ``prefloop
export`` runs them (``write_*`` in a write unit of work), or with ``--save``
through ``export.save`` (one read snapshot, then the audit in a short write).
While each export runs, another engine in the child commits a one-row update
every 0.2 s, as an annotator's judgment would. One line per export::

    export[sqlite] judgments=1000000 format=trl-jsonl rows=... s=... rows_per_s=... peak_rss_mb=...
        base_rss_mb=... out_mb=... writes=... write_failures=... max_write_s=... load1=...   (on one line)

``rows`` is what the file holds (preference rows or raw judgments);
``base_rss_mb`` is the child's RSS after its imports, before the export;
``max_write_s`` the longest of those commits (SQLite gives up after 30 s:
``write_failures``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ANNOTATORS = 50
OVERLAP = 3
FILE_FORMATS = ("trl-jsonl", "trl-parquet", "datasets", "judgments-csv", "judgments-jsonl", "judgments-parquet")
PAGE_FORMATS = ("page-trl-jsonl", "page-trl-parquet", "page-judgments-csv", "page-judgments-jsonl",
                "page-judgments-parquet")


def _corpus(n_chars: int) -> str:
    import numpy as np

    words = np.array("the a model answer reward human prefer which response better because clearly "
                     "slightly code python list value error test data train loss step token".split())
    return " ".join(np.random.default_rng(0).choice(words, n_chars // 4))


def seed(db, n_judgments: int, chunk: int = 20_000) -> None:
    """Bulk-insert an admin, annotators, prompts, responses, comparisons and ``n_judgments`` judgments."""
    import numpy as np
    from _pg import settle

    from annotate.models import Comparison, Judgment, Prompt, Response, User

    rng = np.random.default_rng(0)
    text_pool = _corpus(2_000_000)

    def clip(i: int, lo: int, hi: int) -> str:
        n = lo + (i * 7919) % (hi - lo)
        start = (i * 104729) % (len(text_pool) - n)
        return f"{i}: " + text_pool[start:start + n]

    n_pairs = n_judgments * 3 // 10
    n_base = n_pairs * OVERLAP
    n_revised = n_probes = (n_judgments - n_base) // 2
    n_revised += n_judgments - n_base - n_revised - n_probes
    start_time = datetime.now(timezone.utc) - timedelta(days=30)

    def insert(table, rows):
        with db.begin() as s:
            s.connection().execute(table.__table__.insert(), rows)

    insert(User, [{"id": 1, "username": "admin", "password_hash": "x", "role": "admin"}]
           + [{"id": u + 2, "username": f"annotator{u}", "password_hash": "x", "role": "annotator"}
              for u in range(ANNOTATORS)])
    for lo in range(0, n_pairs, chunk):
        ids = range(lo, min(n_pairs, lo + chunk))
        insert(Prompt, [{"id": i + 1, "content_hash": f"p{i}", "source_tag": f"tag{i % 5}",
                         "external_id": f"prompt-{i}",
                         **({"text": None, "messages": [{"role": "system", "content": "be helpful"},
                                                        {"role": "user", "content": clip(i, 50, 600)}]}
                            if i % 10 == 0 else {"text": clip(i, 50, 600), "messages": None})} for i in ids])
        insert(Response, [{"id": 2 * i + 1 + k, "prompt_id": i + 1, "content_hash": f"r{i}-{k}",
                           "text": clip(2 * i + k + 7, 100, 1500), "external_id": f"resp-{i}-{k}"}
                          for i in ids for k in (0, 1)])
        insert(Comparison, [{"id": i + 1, "prompt_id": i + 1, "response_a_id": 2 * i + 1, "response_b_id": 2 * i + 2,
                             "overlap_target": OVERLAP, "status": "complete", "judgment_count": OVERLAP,
                             "priority": 0.0, "external_id": f"pair-{i}"} for i in ids])

    def judgment(jid: int, pair: int, k: int, r: float, **kw) -> dict:
        choice = "a" if r < 0.45 else "b" if r < 0.85 else "tie" if r < 0.95 else "both_bad"
        return {"id": jid, "comparison_id": pair + 1, "annotator_id": (pair + 7 * k) % ANNOTATORS + 2,
                "source": "annotator", "choice": choice, "flags": [], "a_on_left": bool(jid % 2),
                "time_spent_ms": 3000 + jid % 60000, "strength": 1 + jid % 3 if jid % 4 else None,
                "state": "active", "is_probe": False,
                "created_at": start_time + timedelta(seconds=jid * 2_592_000 // n_judgments), **kw}

    # Superseded rows first (ids 1..n_revised); the first vote on their pair names them in supersedes_id.
    revised_pairs = {(s * 7) % n_pairs: s + 1 for s in range(n_revised)}
    if n_revised:
        insert(Judgment, [judgment(s + 1, (s * 7) % n_pairs, 0, float(r), state="superseded")
                          for s, r in enumerate(rng.random(n_revised))])
    jid = n_revised
    for lo in range(0, n_base, chunk):
        rows = []
        for j, r in zip(range(lo, min(n_base, lo + chunk)), rng.random(chunk)):
            pair, k = divmod(j, OVERLAP)
            jid += 1
            rows.append(judgment(jid, pair, k, float(r),
                                 supersedes_id=revised_pairs.get(pair) if k == 0 else None))
        insert(Judgment, rows)
    for lo in range(0, n_probes, chunk):
        rows = []
        for p, r in zip(range(lo, min(n_probes, lo + chunk)), rng.random(chunk)):
            jid += 1
            rows.append(judgment(jid, (p * 13) % n_pairs, 1, float(r), is_probe=True))
        insert(Judgment, rows)
    settle(db)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class WriteProbe:
    """An annotator's write (one row updated, committed) every 0.2 s from another engine while an export runs."""

    def __init__(self, url: str) -> None:
        import threading

        from annotate.db import Database, create_db_engine

        self.db = Database(create_db_engine(url))
        self.waits: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from sqlalchemy import text

        while not self._stop.wait(0.2):
            t0 = time.perf_counter()
            try:
                with self.db.begin() as s:
                    s.execute(text("UPDATE comparisons SET priority = priority WHERE id = 1"))
            except Exception:
                self.failures += 1
            self.waits.append(time.perf_counter() - t0)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self.db.dispose()
        return {"writes": len(self.waits), "write_failures": self.failures,
                "max_write_s": max(self.waits, default=0.0)}


def child(url: str, fmt: str, out: Path, via_save: bool) -> None:
    """Run one export in this process and print its figures as JSON."""
    from annotate import export
    from annotate.accounts import Actor
    from annotate.db import Database, create_db_engine
    from annotate.models import Role

    import datasets  # noqa: F401 - the server process has these loaded already
    import pyarrow.parquet  # noqa: F401

    db = Database(create_db_engine(url))
    admin = Actor(id=1, username="admin", role=Role.admin)
    base = _rss_mb()
    page = fmt.startswith("page-")
    name = fmt.removeprefix("page-")
    kind = "judgments" if name.startswith("judgments-") else "preferences"
    f = {"trl-jsonl": "jsonl", "trl-parquet": "parquet"}.get(name, name.removeprefix("judgments-"))
    probe = WriteProbe(url)
    t0 = time.perf_counter()
    if page:  # what the admin Export page's download buttons call
        data = export.download(db, actor=admin, kind=kind, format=f)
    elif via_save:
        n = export.save(db, out, actor=admin, kind=kind, format=f)
    else:  # what `prefloop export` calls
        with db.begin() as session:
            write = export.write_judgments if kind == "judgments" else export.write_preferences
            n = write(session, out, actor=admin, format=f)
    seconds = time.perf_counter() - t0
    writes = probe.stop()
    if page:
        out.write_bytes(data)
        n = _count_rows(out, f)
        del data
    size = sum(p.stat().st_size for p in out.rglob("*")) if out.is_dir() else out.stat().st_size
    print(json.dumps({"rows": n, "s": seconds, "peak_rss_mb": _rss_mb(), "base_rss_mb": base,
                      "out_mb": size / 2**20, **writes}))


def _count_rows(path: Path, fmt: str) -> int:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as f:
        lines = sum(1 for _ in f)
    return lines - 1 if fmt == "csv" else lines  # the seeded texts have no newlines; csv has a header


def run_child(url: str, fmt: str, tmp: Path, via_save: bool) -> dict:
    out = tmp / f"export-{uuid.uuid4().hex[:6]}"
    proc = subprocess.run([sys.executable, __file__, "--child", "--url", url, "--format", fmt, "--out", str(out)]
                          + (["--save"] if via_save else []),
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                                "HF_DATASETS_OFFLINE": "1"})
    if proc.returncode:
        raise RuntimeError(f"{fmt}: {proc.stderr[-2000:]}")
    import shutil

    shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _remove_sqlite(folder: Path, name: str) -> None:
    for path in folder.glob(name + ".db*"):  # the database and its -wal, -shm files
        path.unlink()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judgments", default="100000,1000000", help="comma-separated sizes")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--formats", default=",".join(FILE_FORMATS + PAGE_FORMATS))
    parser.add_argument("--save", action="store_true",
                        help="file formats through export.save (one read snapshot) instead of the CLI's "
                             "write_* in a write unit of work")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.url, args.format, Path(args.out), args.save)
        return 0

    from _pg import scratch_database

    from annotate import migrate
    from annotate.db import Database, create_db_engine

    formats = [f for f in args.formats.split(",") if f]
    unknown = set(formats) - set(FILE_FORMATS + PAGE_FORMATS)
    if unknown:
        parser.error(f"unknown formats {sorted(unknown)}")
    print(f"# bench/export_scale.py host={platform.node()} cpus={os.cpu_count()} "
          f"load={'/'.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="prefloop-export-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for size in (int(s) for s in args.judgments.split(",")):
            for backend in args.backends.split(","):
                with contextlib.ExitStack() as scratch:
                    if backend == "postgres":
                        url = scratch.enter_context(scratch_database("prefloop_bench_export"))
                    else:
                        name = f"prefloop_bench_export_{uuid.uuid4().hex[:8]}"
                        url = f"sqlite:///{tmp / (name + '.db')}"
                        scratch.callback(_remove_sqlite, tmp, name)
                    migrate.upgrade(url)
                    db = Database(create_db_engine(url))
                    t0 = time.perf_counter()
                    seed(db, size)
                    db.dispose()
                    print(f"seed[{backend}] judgments={size} s={time.perf_counter() - t0:.1f}", flush=True)
                    for fmt in formats:
                        r = run_child(url, fmt, tmp, args.save and not fmt.startswith("page-"))
                        print(f"export[{backend}] judgments={size} format={fmt} rows={r['rows']} s={r['s']:.1f} "
                              f"rows_per_s={r['rows'] / r['s']:.0f} peak_rss_mb={r['peak_rss_mb']:.0f} "
                              f"base_rss_mb={r['base_rss_mb']:.0f} out_mb={r['out_mb']:.0f} "
                              f"writes={r['writes']} write_failures={r['write_failures']} "
                              f"max_write_s={r['max_write_s']:.2f} load1={os.getloadavg()[0]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
