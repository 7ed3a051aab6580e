"""What computing ``encoder_id`` costs now that it hashes every byte of the weights.

    .venv/bin/python bench/encoder_id.py [--model DIR] [--repeats 3] [--embed-pairs 64] [--threads 2]

Works on a copy of the model directory (the bundled all-MiniLM-L6-v2 by default)
in a temporary folder, so that evicting the copy's pages (``posix_fadvise``
DONTNEED) gives a cold read without touching anyone else's page cache. Prints:
the old first-and-last-MiB fingerprint, a full sha256 read cold and warm, the id
in a fresh process without the memo (first start), in a fresh process with it
(every later start) and again in the same process; then, with ``--embed-pairs``,
what re-embedding costs per HH pair (joint and response vectors of both
responses) when an id changes and its cache directory starts empty.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from rm.encoder import EncoderConfig, _edge_fingerprint, _encoder_id, default_model_path  # noqa: E402

CHILD = ("import sys, time\n"
         "t = time.perf_counter()\n"
         "from pathlib import Path\n"
         "from rm.encoder import EncoderConfig, _encoder_id\n"
         "t0 = time.perf_counter()\n"
         "i = _encoder_id(Path(sys.argv[1]), EncoderConfig())\n"
         "print(i, time.perf_counter() - t0)\n")


def evict(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def full_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def child_id(model: Path, xdg: Path) -> tuple[str, float]:
    env = {**os.environ, "XDG_CACHE_HOME": str(xdg), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(model)], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    return out[0], float(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--embed-pairs", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    src = args.model or default_model_path()
    with tempfile.TemporaryDirectory(dir=ROOT / ".prefloop" if (ROOT / ".prefloop").is_dir() else None) as tmp:
        model = Path(tmp) / "model"
        shutil.copytree(src, model)
        weights = model / "model.safetensors"
        if not weights.is_file():
            weights = model / "pytorch_model.bin"
        size_mb = weights.stat().st_size / 1e6
        time.sleep(2.1)  # the memo takes files whose last change is over 2 s old
        print(f"model: {src} ({weights.name}, {size_mb:.1f} MB)")
        edge = min(timed(lambda: _edge_fingerprint(weights))[0] for _ in range(args.repeats))
        cold, warm = [], []
        for _ in range(args.repeats):
            evict(weights)
            cold.append(timed(lambda: full_sha256(weights))[0])
            warm.append(timed(lambda: full_sha256(weights))[0])
        print(f"old fingerprint (first and last MiB):  {edge * 1e3:8.1f} ms")
        print(f"full sha256, cold read:                 {min(cold) * 1e3:8.1f} ms "
              f"({size_mb / min(cold):.0f} MB/s)")
        print(f"full sha256, warm page cache:           {min(warm) * 1e3:8.1f} ms "
              f"({size_mb / min(warm):.0f} MB/s)")
        first, later = [], []
        for r in range(args.repeats):
            xdg = Path(tmp) / f"xdg{r}"
            ident, t = child_id(model, xdg)
            first.append(t)
            ident2, t = child_id(model, xdg)
            later.append(t)
            assert ident == ident2
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "xdg0")
        _encoder_id(model, EncoderConfig())
        same = min(timed(lambda: _encoder_id(model, EncoderConfig()))[0] for _ in range(args.repeats))
        print(f"encoder_id, new process, no memo:       {min(first) * 1e3:8.1f} ms  (first start)")
        print(f"encoder_id, new process, memo on disk:  {min(later) * 1e3:8.1f} ms  (every later start)")
        print(f"encoder_id, same process again:         {same * 1e3:8.1f} ms")
        print(f"id: {ident}")
        if args.embed_pairs:
            from rm.cache import EmbeddingCache
            from rm.encoder import Encoder
            from rm.features import FeatureSpec, build_features
            from rm_quality import DEFAULT_DATA, load_hh

            prompts, chosen, rejected, _ = load_hh(DEFAULT_DATA)
            n = args.embed_pairs
            enc = Encoder(model, num_threads=args.threads)
            enc.encode(["warm up"])
            cache = EmbeddingCache(Path(tmp) / "cache", enc)
            t, _ = timed(lambda: build_features(prompts[:n] * 2, chosen[:n] + rejected[:n], cache, FeatureSpec()))
            print(f"re-embedding an empty cache ({args.threads} threads): {t:.1f} s for {n} pairs ({2 * n} responses), "
                  f"{t / n:.2f} s per pair; the {len(prompts)} usable HH-harmless test pairs: "
                  f"~{t / n * len(prompts):.0f} s")


if __name__ == "__main__":
    main()
