"""Encoder throughput vs sentence-transformers, head training time, pair scoring time.

    .venv/bin/python bench/encoder_throughput.py [--n-texts 640] [--threads 2]

Both encoders embed the same real HH responses with the same thread count and
batch size 32; runs alternate and the best of ``--repeats`` is kept, because
this machine is shared. Check ``uptime`` first: another encoder job on the
same two cores slows both several-fold.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from rm.data import A_WINS, B_WINS, PairData  # noqa: E402
from rm.encoder import Encoder, EncoderConfig  # noqa: E402
from rm.features import FeatureSpec  # noqa: E402
from rm.heads import pair_probabilities  # noqa: E402
from rm.train import TrainConfig, train_ensemble  # noqa: E402
from rm_quality import DEFAULT_DATA, load_hh  # noqa: E402


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def cache_load(n: int, dim: int) -> None:
    """Time reopening an embedding cache of ``n`` vectors and fetching all of them by text."""
    import tempfile
    from types import SimpleNamespace

    from rm.cache import EmbeddingCache, text_key

    fake = SimpleNamespace(encoder_id="bench-fake", dim=dim)
    texts = [f"response number {i}" for i in range(n)]
    rng = np.random.default_rng(2)
    with tempfile.TemporaryDirectory() as d:
        writer = EmbeddingCache(d, fake, compact_above=10**9)
        for s in range(0, n, 50_000):
            chunk = texts[s:s + 50_000]
            writer._write_shard([text_key("text-start", t) for t in chunk],
                                rng.normal(size=(len(chunk), dim)).astype(np.float32))
        t = time.perf_counter()
        cache = EmbeddingCache(d, fake)
        v = cache.embed(texts)
        load_s = time.perf_counter() - t
    print(f"cache_reopen_and_fetch_{n}_vectors_dim_{dim}_seconds={load_s:.3f} (computed={cache.n_computed}, "
          f"{v.nbytes / 2**20:.0f} MiB)")


def encoder_vs_sentence_transformers(n_texts: int = 640, threads: int = 2, repeats: int = 2) -> dict:
    """Texts per second of our encoder and of sentence-transformers' ``encode`` on the same HH texts; prints them."""
    from sentence_transformers import SentenceTransformer

    data = DEFAULT_DATA
    _, chosen, rejected, _ = load_hh(data)
    rng = np.random.default_rng(0)
    texts = [str(t) for t in rng.choice(np.array(chosen + rejected, dtype=object), n_texts, replace=False)]
    ours_last = Encoder(config=EncoderConfig(layers=(-1,)), num_threads=threads)
    ours_default = Encoder(num_threads=threads)
    st = SentenceTransformer(str(ours_last.model_path), device="cpu")
    st.max_seq_length = ours_last.config.max_length
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours_last.encode(texts[:8]), ours_default.encode(texts[:8]), st.encode(texts[:8])  # warm up
        t_st, t_last, t_def = [], [], []
        for _ in range(repeats):  # alternate, keep the best: the machine is shared
            t_st.append(best_of(lambda: st.encode(texts, batch_size=32), 1))
            t_last.append(best_of(lambda: ours_last.encode(texts), 1))
            t_def.append(best_of(lambda: ours_default.encode(texts), 1))
    finally:
        torch.set_num_threads(previous)
    n = len(texts)
    out = {"st": n / min(t_st), "last": n / min(t_last), "default": n / min(t_def)}
    print(f"encoder  texts={n} threads={threads} sentence_transformers_texts_per_s={out['st']:.1f}")
    print(f"encoder  ours_last_layer_texts_per_s={out['last']:.1f}  ratio_vs_st={min(t_st) / min(t_last):.2f}")
    print(f"encoder  ours_default_texts_per_s={out['default']:.1f} (layers={ours_default.config.layers}, "
          f"{ours_default.config.layer_pooling})  ratio_vs_st={min(t_st) / min(t_def):.2f}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-texts", type=int, default=640)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--train-pairs", type=int, default=10_000)
    ap.add_argument("--skip-encoder", action="store_true")
    ap.add_argument("--cache-vectors", type=int, default=200_000)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"load_average_at_start={os.getloadavg()[0]:.2f} threads={args.threads}")

    default_dim = FeatureSpec().dim(Encoder().dim)
    if not args.skip_encoder:
        encoder_vs_sentence_transformers(args.n_texts, args.threads, args.repeats)

    rng = np.random.default_rng(1)
    n = args.train_pairs
    dim = default_dim
    feat = rng.normal(size=(2 * n, dim)).astype(np.float32)
    true_w = rng.normal(size=dim).astype(np.float32) / np.sqrt(dim)
    r = feat @ true_w
    outcome = np.where(rng.random(n) < 1 / (1 + np.exp(-(r[:n] - r[n:]))), A_WINS, B_WINS)
    pairs = PairData(feat, np.arange(n), np.arange(n, 2 * n), outcome,
                     group=np.arange(n) // 2)
    cfg = TrainConfig()
    t = time.perf_counter()
    ens = train_ensemble(pairs, cfg, seed=0)
    train_s = time.perf_counter() - t
    print(f"train_{n}_pairs_dim_{dim}_members_{cfg.n_members}_seconds={train_s:.2f} (lbfgs iterations={ens.info['steps']})")

    t = time.perf_counter()
    ens.member_rewards(feat)
    rew_s = time.perf_counter() - t
    print(f"member_rewards_{2 * n}_responses_seconds={rew_s:.3f}  "
          f"(~{rew_s / (2 * n) * 2e6:.1f} s per 2M responses)")

    n_resp = 2 * args.pairs
    members = rng.normal(size=(cfg.n_members, n_resp)).astype(np.float32)
    ia = rng.integers(0, n_resp, args.pairs)
    ib = rng.integers(0, n_resp, args.pairs)
    t = time.perf_counter()
    p = pair_probabilities(members, ia, ib)
    mean_p = p.mean(axis=0)
    std_p = p.std(axis=0)
    pair_s = time.perf_counter() - t
    print(f"score_{args.pairs}_pairs_from_{n_resp}_response_rewards_seconds={pair_s:.3f} "
          f"(members={cfg.n_members}, includes mean/std over members; checksum {float(mean_p[:5].sum() + std_p[:5].sum()):.4f})")
    cache_load(args.cache_vectors, Encoder().dim)
    print(f"load_average_at_end={os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
