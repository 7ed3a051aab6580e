"""Time and memory of `prefloop import` at the scale real teams use.

Builds import files from the real HH-RLHF harmless-base test split
(tests/data, 2,312 rows; ``--hh`` to give another HH file) in a temporary
folder, repeating it with a copy number written into every prompt and response so
that each repeat is new content, then runs ``prefloop import`` on each file in a
subprocess of its own (its peak RSS is that process's own) against a fresh
SQLite file and a scratch PostgreSQL database (dropped at the end). Each import
is then run again on the same database: the re-import must add nothing.

Shapes (``--shapes``):

``hh-jsonl``
    HH transcripts, JSON Lines (the HH-RLHF train files, uncompressed).
``hh-gz``
    the same, ``.jsonl.gz`` (as HH-RLHF ships).
``pairs-json``
    pairs with a known winner, as one ``.json`` array.
``pairs-csv``
    the same pairs as CSV.
``kwise-jsonl``
    k-wise rows of 4 responses (6 comparisons each; rows = comparisons / 6).

    .venv/bin/python bench/import_scale.py                          # 50k and 200k HH rows, both backends
    .venv/bin/python bench/import_scale.py --rows 50000 --backends sqlite --shapes hh-jsonl kwise-jsonl
    PREFLOOP_BENCH_PG_URL=postgresql+psycopg://postgres@host:5432/postgres .venv/bin/python bench/import_scale.py

``--rows`` counts comparisons. Prints one line per import: shape, backend, rows,
file MB, seconds, comparisons/s, peak RSS MB and RSS over file size, and the
same for the re-import, plus the RSS of importing a one-row file (the
interpreter and its libraries) for reference, and the load average before each
import.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from annotate import ingest, migrate  # noqa: E402
from _pg import scratch_database  # noqa: E402

HH = ROOT / "tests" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
SHAPES = ("hh-jsonl", "hh-gz", "pairs-json", "pairs-csv", "kwise-jsonl")
K = 4


def hh_rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _copy(transcript: str, n: int) -> str:
    # The copy number goes into the first Human turn (a new prompt) and after the text (new responses).
    return transcript.replace("\n\nHuman: ", f"\n\nHuman: (copy {n}) ", 1) + f" ({n})"


def hh_copies(base: list[dict], rows: int):
    """``rows`` HH rows: the base rows over and over, each repeat new content."""
    for i in range(rows):
        row = base[i % len(base)]
        n = i // len(base)
        yield {"chosen": _copy(row["chosen"], n), "rejected": _copy(row["rejected"], n)}


def pair_copies(base: list[dict], rows: int):
    """The same rows as pairs with a known winner (prompt as chat messages, the HH parser's own split)."""
    for i, row in enumerate(hh_copies(base, rows)):
        parsed = ingest.parse_file(json.dumps(row).encode(), filename="row.jsonl")
        if not parsed.ok:  # the few HH rows the importer refuses are refused in every shape
            continue
        c = parsed.comparisons[0]
        yield {"id": f"r{i}", "prompt": c.prompt, "response_a": c.response_a, "response_b": c.response_b,
               "winner": c.winner.value}


def build(shape: str, base: list[dict], rows: int, folder: Path) -> Path:
    if shape in ("hh-jsonl", "hh-gz"):
        path = folder / f"{shape}-{rows}.jsonl" if shape == "hh-jsonl" else folder / f"hh-{rows}.jsonl.gz"
        opener = open if shape == "hh-jsonl" else gzip.open
        with opener(path, "wt", encoding="utf-8") as fh:
            for row in hh_copies(base, rows):
                fh.write(json.dumps(row) + "\n")
    elif shape == "pairs-json":
        path = folder / f"pairs-{rows}.json"
        with path.open("w", encoding="utf-8") as fh:
            fh.write("[\n")
            for i, row in enumerate(pair_copies(base, rows)):
                fh.write(("" if i == 0 else ",\n") + json.dumps(row))
            fh.write("\n]\n")
    elif shape == "pairs-csv":
        path = folder / f"pairs-{rows}.csv"
        with path.open("w", encoding="utf-8", newline="") as fh:
            out = csv.DictWriter(fh, ["id", "prompt", "response_a", "response_b", "winner"])
            out.writeheader()
            for row in pair_copies(base, rows):
                out.writerow({**row, "prompt": json.dumps(row["prompt"])})
    elif shape == "kwise-jsonl":
        path = folder / f"kwise-{rows}.jsonl"
        n_rows = rows // (K * (K - 1) // 2)
        with path.open("w", encoding="utf-8") as fh:
            pairs = pair_copies(base, n_rows * 2)
            for i in range(n_rows):
                first, second = next(pairs), next(pairs)
                responses = [first["response_a"], first["response_b"], second["response_a"] + " (alt)",
                             second["response_b"] + " (alt)"]
                fh.write(json.dumps({"id": f"k{i}", "prompt": first["prompt"], "responses": responses,
                                     "comparisons": [{"a": 0, "b": 1, "winner": first["winner"]}]}) + "\n")
    else:
        raise ValueError(shape)
    return path


def run_import(url: str, path: Path, data_dir: Path, tree: Path = ROOT) -> tuple[float, float, str]:
    """Seconds, peak RSS in MB, and the summary's first line of ``prefloop import`` in its own process."""
    env = {**os.environ, "PREFLOOP_DATABASE_URL": url, "PREFLOOP_DATA_DIR": str(data_dir),
           "PREFLOOP_MAX_UPLOAD_MB": "4096", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-c", "import sys; from annotate.cli import main; sys.exit(main())", "import", str(path)]
    start = time.perf_counter()
    env["PYTHONPATH"] = str(tree)
    proc = subprocess.Popen(cmd, env=env, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close(), proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"import of {path.name} failed ({proc.returncode}):\n{err[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, out.splitlines()[0] if out else ""


class Backend:
    def __init__(self, name: str, folder: Path):
        self.name, self.folder, self.scratch = name, folder, contextlib.ExitStack()

    def fresh(self) -> str:
        if self.name == "sqlite":
            url = f"sqlite:///{self.folder / f'{uuid.uuid4().hex[:8]}.db'}"
        else:
            url = self.scratch.enter_context(scratch_database(f"prefloop_bench_import_{os.getpid()}"))
        migrate.upgrade(url)
        return url

    def close(self) -> None:
        """Drop the PostgreSQL databases ``fresh`` made."""
        self.scratch.close()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000], help="comparisons per file")
    parser.add_argument("--backends", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=["hh-jsonl"])
    parser.add_argument("--no-reimport", action="store_true", help="skip importing each file a second time")
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="the checkout whose importer runs (e.g. an older commit's, to compare)")
    parser.add_argument("--hh", type=Path, default=HH, help="an HH-RLHF .jsonl.gz to build from")
    args = parser.parse_args()

    base = hh_rows(args.hh)
    print(f"base: {args.hh.name}, {len(base)} rows; importer from {args.tree}; cpus {os.cpu_count()}; "
          f"load {load()}")
    with tempfile.TemporaryDirectory(prefix="prefloop-import-scale-") as tmp:
        folder = Path(tmp)
        (folder / "one").mkdir()
        one = build("hh-jsonl", base[:1], 1, folder / "one")
        backends = [Backend(name, folder) for name in args.backends]
        try:
            for backend in backends:
                seconds, rss, _ = run_import(backend.fresh(), one, folder, args.tree)
                print(f"{backend.name} one-row import: {seconds:.2f} s, peak RSS {rss:.0f} MB")
            for shape in args.shapes:
                for rows in args.rows:
                    path = build(shape, base, rows, folder)
                    mb = path.stat().st_size / 2**20
                    for backend in backends:
                        url = backend.fresh()
                        runs = ["import"] + ([] if args.no_reimport else ["reimport"])
                        for run in runs:
                            before = load()
                            seconds, rss, summary = run_import(url, path, folder, args.tree)
                            print(f"{shape} {backend.name} {run}: rows {rows}, file {mb:.0f} MB, {seconds:.1f} s, "
                                  f"{rows / seconds:,.0f} rows/s, peak RSS {rss:.0f} MB ({rss / mb:.1f}x file), "
                                  f"load {before}")
                            print(f"    {summary}")
                    path.unlink()
        finally:
            for backend in backends:
                backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
