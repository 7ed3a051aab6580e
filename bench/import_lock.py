"""How long `prefloop import` holds SQLite's write lock, which every annotator's judgment waits on.

Builds an HH-RLHF JSON Lines file of ``--rows`` rows (as bench/import_scale.py does: the real test split
repeated, each repeat new content), runs ``prefloop import`` on it against a fresh SQLite file in a process
of its own, and meanwhile probes the lock from a second connection: every ``--interval`` seconds it tries
``BEGIN IMMEDIATE`` with no busy timeout (as a judgment's write unit of work begins) and rolls back at once
when it gets the lock. A probe that finds the database locked counts ``--interval`` seconds of lock held.

    .venv/bin/python bench/import_lock.py                  # 20k rows
    .venv/bin/python bench/import_lock.py --rows 50000 --interval 0.1

Prints, per run: import seconds, lock-held seconds (and its share of the import), the seconds from the
import's start to the first locked probe (the part of the run during which an annotator could still save),
the number of probes, and the import's peak RSS.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from import_scale import HH, build, hh_rows, load, run_import  # noqa: E402

from annotate import migrate  # noqa: E402


class LockProbe(threading.Thread):
    """Tries BEGIN IMMEDIATE with timeout 0 every ``interval`` seconds until stopped; counts the locked tries."""

    def __init__(self, path: Path, interval: float):
        super().__init__(daemon=True)
        self.path, self.interval = path, interval
        self.stop = threading.Event()
        self.tries = self.locked = 0
        self.first_locked: float | None = None
        self.start_time = 0.0

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        self.start_time = time.perf_counter()
        try:
            while not self.stop.wait(self.interval):
                self.tries += 1
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc):
                        raise
                    self.locked += 1
                    if self.first_locked is None:
                        self.first_locked = time.perf_counter() - self.start_time
                else:
                    conn.execute("ROLLBACK")
        finally:
            conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="HH rows in the file")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between lock probes")
    parser.add_argument("--runs", type=int, default=1, help="imports, each into a fresh database")
    parser.add_argument("--tree", type=Path, default=ROOT.parent,
                        help="the checkout whose importer runs (e.g. an older commit's, to compare)")
    args = parser.parse_args()

    print(f"importer from {args.tree}; load {load()}")
    with tempfile.TemporaryDirectory(prefix="prefloop-import-lock-") as tmp:
        folder = Path(tmp)
        path = build("hh-jsonl", hh_rows(HH), args.rows, folder)
        print(f"file: {path.name}, {path.stat().st_size / 2**20:.0f} MB")
        for run in range(1, args.runs + 1):
            db_path = folder / f"run{run}.db"
            migrate.upgrade(f"sqlite:///{db_path}")
            probe = LockProbe(db_path, args.interval)
            probe.start()
            try:
                seconds, rss, summary = run_import(f"sqlite:///{db_path}", path, folder, args.tree)
            finally:
                probe.stop.set()
                probe.join()
            held = probe.locked * args.interval
            first = f"{probe.first_locked:.1f} s" if probe.first_locked is not None else "never"
            print(f"run {run}: rows {args.rows}, import {seconds:.1f} s, lock held {held:.1f} s "
                  f"({held / seconds:.0%}), first locked at {first}, probes {probe.tries} "
                  f"({probe.locked} locked), peak RSS {rss:.0f} MB")
            print(f"    {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
