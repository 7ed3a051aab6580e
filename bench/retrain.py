"""Wall time of one retrain + rescore cycle, on SQLite and PostgreSQL, and of scoring 1M open pairs.

    python bench/retrain.py [--labelled 10000] [--open 100000] [--per-prompt 2] [--score-pairs 1000000]

Seeds scratch databases (dropped afterwards) with ``--labelled`` judged pairs
and ``--open`` open comparisons (``--per-prompt`` responses per prompt; 2 =
plain pairs, the most responses for a given number of comparisons).

**Embeddings are cached**: the embedding cache is pre-filled with synthetic
vectors for every text under the real encoder's id, so the job runs no
transformer at all (the run's ``n_embedded`` is printed and must be 0). The
synthetic vectors carry a latent quality that decides the judgments, so the
heads have something to learn. Everything else is the real job: the
snapshot read, the cache lookups, training, evaluation, saving, scoring, the
acquisition strategy and the bulk priority write. Two cycles run per
backend: the first model (no active model) and a second one (forced, with the
active model re-scored on the held-out pairs).

Last, the encoder's throughput against sentence-transformers' ``encode`` on
the same real HH texts and thread count (``bench/encoder_throughput.py``'s
function; ``--skip-encoder`` leaves it out).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from annotate import migrate, retrain  # noqa: E402
from annotate.db import Database, create_db_engine  # noqa: E402
from annotate.models import Comparison, Judgment, Prompt, Response  # noqa: E402
from annotate.settings import load_settings  # noqa: E402
from _pg import scratch_database, settle  # noqa: E402


class SyntheticEncoder:
    """Stands in for the encoder while *filling* the cache: same id and dim, vectors from a latent quality."""

    def __init__(self, real, quality: dict[str, float], seed: int = 0):
        self.encoder_id, self.dim = real.encoder_id, real.dim
        self.quality = quality
        self.rng = np.random.default_rng(seed)
        self.direction = self.rng.standard_normal(self.dim).astype(np.float32)
        self.direction /= np.linalg.norm(self.direction)

    def _vecs(self, responses):
        q = np.array([self.quality.get(r, 0.0) for r in responses], dtype=np.float32)
        v = self.rng.standard_normal((len(responses), self.dim)).astype(np.float32) * 0.1
        v += 0.05 * q[:, None] * self.direction[None, :]
        return v

    def encode(self, texts, keep="start"):
        return self._vecs(texts)

    def encode_pairs(self, prompts, responses):
        return self._vecs(responses)


def shape(n_labelled: int, n_open: int, per_prompt: int):
    """Prompts, responses and comparisons: ``(n_prompts, pairs)`` with pairs as (prompt, k_a, k_b, judged)."""
    combos = [(a, b) for a in range(per_prompt) for b in range(a + 1, per_prompt)]
    total = n_labelled + n_open
    n_prompts = -(-total // len(combos))
    pairs = []
    for i in range(total):
        p, c = divmod(i, len(combos))
        pairs.append((p, combos[c][0], combos[c][1], i < n_labelled))
    return n_prompts, pairs


def seed(db: Database, n_prompts: int, per_prompt: int, pairs, quality: np.ndarray, chunk: int = 50_000) -> None:
    rng = np.random.default_rng(1)
    for start in range(0, n_prompts, chunk):
        stop = min(n_prompts, start + chunk)
        with db.begin() as s:
            s.execute(insert(Prompt), [{"id": i + 1, "content_hash": f"p{i}", "text": f"prompt {i}: what about it?"}
                                       for i in range(start, stop)])
            s.execute(insert(Response), [
                {"id": i * per_prompt + k + 1, "prompt_id": i + 1, "content_hash": f"r{i}-{k}",
                 "text": f"response {k} to prompt {i}" + " more" * int(rng.integers(0, 20))}
                for i in range(start, stop) for k in range(per_prompt)])
    jid = 0
    for start in range(0, len(pairs), chunk):
        rows, judg = [], []
        for n, (p, ka, kb, judged) in enumerate(pairs[start:start + chunk], start):
            ra, rb = p * per_prompt + ka + 1, p * per_prompt + kb + 1
            rows.append({"id": n + 1, "prompt_id": p + 1, "response_a_id": ra, "response_b_id": rb,
                         "overlap_target": 1, "priority": float(rng.random()),
                         "status": "complete" if judged else "open", "judgment_count": int(judged)})
            if judged:
                p_a = 1.0 / (1.0 + np.exp(-(quality[ra - 1] - quality[rb - 1])))
                jid += 1
                judg.append({"id": jid, "comparison_id": n + 1, "annotator_id": None, "source": "imported",
                             "choice": "a" if rng.random() < p_a else "b", "flags": []})
        with db.begin() as s:
            s.execute(insert(Comparison), rows)
            if judg:
                s.execute(insert(Judgment), judg)
    settle(db)


def texts_from_db(db: Database):
    from sqlalchemy import select

    with db.read() as s:
        rows = s.execute(select(Response.id, Prompt.text, Response.text).join(Prompt).order_by(Response.id)).all()
    return [r[1] for r in rows], [r[2] for r in rows]


def report(backend: str, r: dict) -> None:
    print(f"{backend:8s} seed_s={r['seed_s']:.2f} cache_prefill_s={r['prefill_s']:.2f}")
    for cycle in (1, 2):
        c = r[f"cycle{cycle}"]
        steps = " ".join(f"{k}={v:.2f}" for k, v in c["timings"].items() if k != "total")
        print(f"{backend:8s} cycle{cycle} wall_s={c['wall_s']:.2f} status={c['status']} "
              f"acc={c['accuracy']:.4f} n_embedded={c['counts'].get('n_embedded')} "
              f"written={c['counts'].get('n_priorities_written')} | {steps}", flush=True)


def run_backend(name: str, url: str, args, quality: np.ndarray, n_prompts: int, pairs, tmp: Path) -> dict:
    from rm.cache import EmbeddingCache
    from rm.features import build_features

    settings = load_settings(environ={}, database_url=url, data_dir=tmp / f"data-{name}", env="test",
                             torch_threads=2)
    db = Database(create_db_engine(url))
    out = {}
    try:
        t0 = time.perf_counter()
        seed(db, n_prompts, args.per_prompt, pairs, quality)
        out["seed_s"] = time.perf_counter() - t0
        encoder = retrain.get_encoder(settings)
        prompts, responses = texts_from_db(db)
        qmap = dict(zip(responses, quality.tolist()))
        t0 = time.perf_counter()
        cache = EmbeddingCache(settings.cache_dir, SyntheticEncoder(encoder, qmap))
        build_features(prompts, responses, cache)
        out["prefill_s"] = time.perf_counter() - t0
        for cycle in (1, 2):
            t0 = time.perf_counter()
            result = retrain.run_once(settings, force=True, db=db, encoder=encoder)
            wall = time.perf_counter() - t0
            if result.status not in ("succeeded", "rejected"):
                raise SystemExit(f"{name}: cycle {cycle} {result.status}: {result.message}")
            out[f"cycle{cycle}"] = {"wall_s": wall, "status": result.status, "timings": result.timings,
                                    "counts": result.counts,
                                    "accuracy": (result.metrics.get("new") or {}).get("accuracy")}
            if result.counts.get("n_embedded"):
                raise SystemExit(f"{name}: {result.counts['n_embedded']} texts were encoded; the cache was not warm")
    finally:
        db.dispose()
    return out


def bench_scoring(n_pairs: int, per_prompt: int, dim: int, strategy: str) -> dict:
    """Score ``n_pairs`` open comparisons the way the job's ``score`` step does (no database).

    Response features come from one in-memory block standing in for the cache
    reads (the copy time is excluded from the scoring figure); timed: per-response member
    rewards, pair probabilities, then the acquisition priorities.
    """
    from rm.heads import Ensemble, pair_probabilities

    from annotate.campaign import defaults

    combos = per_prompt * (per_prompt - 1) // 2
    n_prompts = -(-n_pairs // combos)
    n_resp = n_prompts * per_prompt
    rng = np.random.default_rng(0)
    m = 5
    ens = Ensemble(mean=np.zeros(dim, np.float32), scale=np.ones(dim, np.float32),
                   params={"w": rng.standard_normal((m, dim)).astype(np.float32) * 0.05,
                           "b": np.zeros(m, np.float32)})
    pair_idx = np.array([(a, b) for a in range(per_prompt) for b in range(a + 1, per_prompt)])
    p, c = np.divmod(np.arange(n_pairs), combos)
    ia, ib = p * per_prompt + pair_idx[c, 0], p * per_prompt + pair_idx[c, 1]
    generated = [0.0]
    block = rng.standard_normal((retrain.SCORE_CHUNK, dim), dtype=np.float32)

    def featurize(sel):
        # One block of vectors reused: the cost measured is scoring, not generating vectors.
        t = time.perf_counter()
        f = block[np.asarray(sel) % len(block)]
        generated[0] += time.perf_counter() - t
        return f

    t0 = time.perf_counter()
    rewards = retrain.score_responses(ens, np.arange(n_resp), featurize)
    t_rewards = time.perf_counter() - t0 - generated[0]
    t0 = time.perf_counter()
    probs = pair_probabilities(rewards, ia, ib)
    probs.mean(axis=0)
    t_pairs = time.perf_counter() - t0
    options = replace(defaults(load_settings(environ={})), strategy=strategy)
    t0 = time.perf_counter()
    _, _, name = retrain._priorities(probs, ia=ia, ib=ib, groups=p, labelled=None, features_of=featurize,
                                     n_rows=n_resp, dim=dim, options=options, rng=np.random.default_rng(0))
    t_acq = time.perf_counter() - t0
    return {"n_pairs": n_pairs, "n_responses": n_resp, "rewards_s": t_rewards, "pairs_s": t_pairs,
            "acquisition_s": t_acq, "strategy": name, "score_s": t_rewards + t_pairs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labelled", type=int, default=10_000)
    ap.add_argument("--open", type=int, default=100_000)
    ap.add_argument("--per-prompt", type=int, default=2)
    ap.add_argument("--score-pairs", type=int, default=1_000_000)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--skip-encoder", action="store_true")
    args = ap.parse_args()

    from annotate.campaign import defaults

    n_prompts, pairs = shape(args.labelled, args.open, args.per_prompt)
    quality = np.random.default_rng(2).standard_normal(n_prompts * args.per_prompt) * 1.5
    load = os.getloadavg()
    settings0 = load_settings(environ={})
    print(f"# bench/retrain.py  host={platform.node()} cpus={os.cpu_count()} "
          f"load1={load[0]:.2f} torch_threads={settings0.torch_threads}")
    print(f"# shape: labelled={args.labelled} open={args.open} prompts={n_prompts} "
          f"responses={n_prompts * args.per_prompt} per_prompt={args.per_prompt} "
          f"strategy={defaults(settings0).strategy}")
    print("# embeddings: cache pre-filled with synthetic vectors under the real encoder id; "
          "no text is encoded during the cycles (n_embedded=0 is checked)", flush=True)
    results = {}
    with tempfile.TemporaryDirectory(prefix="prefloop-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for backend in args.backends.split(","):
            if backend == "sqlite":
                url = f"sqlite:///{tmp / 'bench.db'}"
                migrate.upgrade(url)
                results["sqlite"] = run_backend("sqlite", url, args, quality, n_prompts, pairs, tmp)
                report("sqlite", results["sqlite"])
            elif backend == "postgres":
                with scratch_database("prefloop_bench_retrain") as url:
                    migrate.upgrade(url)
                    results["postgres"] = run_backend("postgres", url, args, quality, n_prompts, pairs, tmp)
                    report("postgres", results["postgres"])

    if args.score_pairs:
        dim = retrain.get_encoder(settings0).dim * 2
        for strategy in ("margin", "default"):
            s = bench_scoring(args.score_pairs, args.per_prompt, dim, strategy)
            print(f"score_1M  pairs={s['n_pairs']} responses={s['n_responses']} feature_dim={dim} members=5 "
                  f"rewards_s={s['rewards_s']:.2f} pair_probs_s={s['pairs_s']:.2f} score_s={s['score_s']:.2f} "
                  f"acquisition={s['strategy']} acquisition_s={s['acquisition_s']:.2f}")
    if not args.skip_encoder:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from encoder_throughput import encoder_vs_sentence_transformers

        encoder_vs_sentence_transformers(threads=settings0.torch_threads)


if __name__ == "__main__":
    main()
