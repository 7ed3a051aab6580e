"""Memory the admin Import page keeps while a large file is chosen.

Writes a synthetic pairs JSON Lines file (``--mb``, 100 MB by default; ~1 KB
rows with a known winner), opens the Import page in an AppTest as an admin of a
fresh SQLite database, chooses the file, and reads the process's memory at each
step: after the page opens, after the run that parses the file, after a later
run (any widget press), and, with ``--import``, after Import. AppTest runs the
page in this process, as the server does; the test harness holds the uploaded
bytes, as Streamlit's upload manager does.

    .venv/bin/python bench/import_page_memory.py                  # 100 MB
    .venv/bin/python bench/import_page_memory.py --mb 20 --import

Each step prints ``step: rss_mb=… traced_mb=… session_mb=…``: resident set
size (after ``gc.collect`` and glibc ``malloc_trim``, so freed memory is not
counted), Python's traced allocations (``tracemalloc``, current) and the
pickled size of the session state besides the upload widget's file. The run
that parses also prints its traced peak.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import pickle
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotate import migrate  # noqa: E402
from annotate.accounts import Actor, create_user  # noqa: E402
from annotate.db import Database, create_db_engine  # noqa: E402

APP = str(ROOT / "streamlit_app.py")
PAGE = str(ROOT / "annotate" / "ui" / "pages" / "admin_import.py")


def write_file(path: Path, mb: float) -> int:
    """Pairs with a known winner, each row ~1 KB of distinct text, up to ``mb`` MB; returns the row count."""
    rows = 0
    with path.open("w") as out:
        while out.tell() < mb * 2**20:
            out.write(json.dumps({"prompt": f"Prompt {rows}: " + "question " * 30,
                                  "response_a": f"Answer A {rows}: " + "alpha " * 60,
                                  "response_b": f"Answer B {rows}: " + "beta " * 70, "winner": "a"}) + "\n")
            rows += 1
    return rows


def rss_mb() -> float:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def session_mb(at) -> float:
    return sum(len(pickle.dumps(at.session_state[k])) for k in at.session_state if k != "import_file") / 2**20


def report(step: str, at) -> None:
    rss = rss_mb()
    print(f"{step}: rss_mb={rss:.0f} traced_mb={tracemalloc.get_traced_memory()[0] / 2**20:.0f} "
          f"session_mb={session_mb(at):.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100)
    parser.add_argument("--import", dest="do_import", action="store_true", help="press Import as well")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="prefloop-import-page-"))
    url = f"sqlite:///{tmp / 'prefloop.db'}"
    os.environ.update(PREFLOOP_DATABASE_URL=url, PREFLOOP_DATA_DIR=str(tmp / "data"), PREFLOOP_ENV="test",
                      PREFLOOP_MAX_UPLOAD_MB=str(int(args.mb * 2) + 1))
    migrate.upgrade(url)
    database = Database(create_db_engine(url))
    with database.begin() as session:
        user = create_user(session, "bench-admin", "bench-password-1", "admin", system=True)
        actor = Actor(id=user.id, username=user.username, role=user.role)
    database.dispose()
    path = tmp / "pairs.jsonl"
    rows = write_file(path, args.mb)
    content = path.read_bytes()
    print(f"file: {len(content) / 2**20:.0f} MB, {rows} rows", flush=True)

    from streamlit.testing.v1 import AppTest

    tracemalloc.start()
    at = AppTest.from_file(APP, default_timeout=3600)
    at.session_state["actor"] = actor
    at.run()
    at.switch_page(PAGE).run()
    report("opened", at)
    at.file_uploader(key="import_file").upload(path.name, content, "application/jsonl")
    del content
    tracemalloc.reset_peak()
    start = time.perf_counter()
    at.run()
    assert not at.exception, at.exception
    seconds = time.perf_counter() - start
    print(f"parse run: {seconds:.1f} s, traced_peak_mb={tracemalloc.get_traced_memory()[1] / 2**20:.0f}")
    report("parsed", at)
    start = time.perf_counter()
    at.run()
    print(f"later run: {time.perf_counter() - start:.2f} s")
    report("later run", at)
    if args.do_import:
        next(b for b in at.button if b.label == "Import").click().run()
        assert not at.exception and at.success, (at.exception, [e.value for e in at.error])
        report("imported", at)


if __name__ == "__main__":
    main()
