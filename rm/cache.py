"""On-disk embedding cache: each (encoder_id, text) is embedded once, ever.

Layout under the directory passed in::

    <dir>/<encoder_id>/shard-<time>-<pid>-<rand>.npy        float32 (n, dim) vectors
    <dir>/<encoder_id>/shard-<time>-<pid>-<rand>.keys.npy   uint8 (n, 32) sha256 keys

Shards are append-only. Each file is written to a temporary name, fsynced and
renamed; the keys file is renamed last and is the commit marker, so a process
killed mid-write leaves at most an ignored temporary file. Readers open vectors
memory-mapped, so bulk loads cost little; several processes may read and append
at once (they may occasionally embed the same text twice, never mix vectors).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

_KEY_BYTES = 32


def text_key(kind: str, *parts: str) -> bytes:
    """sha256 key of a cached input; ``kind`` separates texts, prompts and pairs.

    Parts are joined by NUL. Parts that hold a NUL themselves are keyed by their byte lengths
    and bytes instead (under ``kind#len``), or ("a\\0b", "c") and ("a", "b\\0c") would share a
    key; NUL-free inputs, all real text, keep the keys existing caches hold.
    """
    h = hashlib.sha256(kind.encode())
    if any("\x00" in p for p in parts):
        h.update(b"#len")
        for p in parts:
            data = p.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
        return h.digest()
    for p in parts:
        h.update(b"\x00")
        h.update(p.encode("utf-8", "surrogatepass"))
    return h.digest()


class EmbeddingCache:
    """Embeddings of one encoder, persisted under ``directory / encoder.encoder_id``.

    Args:
        directory: Root cache directory (created if missing).
        encoder: An ``rm.encoder.Encoder`` (or any object with ``encoder_id``,
            ``dim``, ``encode(texts, keep=)`` and ``encode_pairs(prompts, responses)``).
        flush_every: Inputs embedded between shard writes, so a long job killed
            midway keeps most of its work.
        compact_above: Merge shards into one when there are more than this many.
    """

    def __init__(self, directory: str | os.PathLike, encoder, *, flush_every: int = 1024,
                 compact_above: int = 64):
        self.encoder = encoder
        self.path = Path(directory) / encoder.encoder_id
        self.path.mkdir(parents=True, exist_ok=True)
        self.flush_every = flush_every
        self.compact_above = compact_above
        self.n_computed = 0
        self._index: dict[bytes, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        self._names: set[str] = set()
        self.refresh()

    # -- reading -------------------------------------------------------------
    def refresh(self) -> None:
        """Pick up shards written by other processes since the last look."""
        for keys_file in sorted(self.path.glob("shard-*.keys.npy")):
            name = keys_file.name[: -len(".keys.npy")]
            if name in self._names:
                continue
            try:
                keys = np.load(keys_file)
                vecs = np.load(self.path / f"{name}.npy", mmap_mode="r")
            except (FileNotFoundError, ValueError, OSError):
                continue  # being compacted away or unreadable: the data lives elsewhere
            if keys.ndim != 2 or keys.shape[1] != _KEY_BYTES or len(vecs) != len(keys):
                continue
            shard_no = len(self._shards)
            self._shards.append(vecs)
            self._names.add(name)
            for row, k in enumerate(keys):
                self._index.setdefault(k.tobytes(), (shard_no, row))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: bytes) -> bool:
        return key in self._index

    def _gather(self, keys: Sequence[bytes]) -> np.ndarray:
        out = np.empty((len(keys), self.encoder.dim), dtype=np.float32)
        loc = np.array([self._index[k] for k in keys], dtype=np.int64).reshape(-1, 2)
        for shard_no in np.unique(loc[:, 0]):
            sel = np.flatnonzero(loc[:, 0] == shard_no)
            rows = loc[sel, 1]
            order = np.argsort(rows)  # ascending rows read the memory map sequentially
            out[sel[order]] = self._shards[shard_no][rows[order]]
        return out

    # -- writing -------------------------------------------------------------
    def _write_shard(self, keys: list[bytes], vecs: np.ndarray) -> None:
        name = f"shard-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        key_arr = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), _KEY_BYTES)
        _atomic_save(self.path / f"{name}.npy", np.ascontiguousarray(vecs, dtype=np.float32))
        _atomic_save(self.path / f"{name}.keys.npy", key_arr)

    def _lookup(self, keys: list[bytes], compute: Callable[[list[int]], np.ndarray]) -> np.ndarray:
        missing = list(dict.fromkeys(k for k in keys if k not in self._index))
        if missing:
            self.refresh()
            missing = [k for k in missing if k not in self._index]
        if missing:
            first = {}
            for i, k in enumerate(keys):
                first.setdefault(k, i)
            for s in range(0, len(missing), self.flush_every):
                chunk = missing[s:s + self.flush_every]
                vecs = compute([first[k] for k in chunk])
                self._write_shard(chunk, vecs)
                self.n_computed += len(chunk)
            self.refresh()
            if len(self._shards) > self.compact_above:
                self.compact()
        return self._gather(keys)

    def embed(self, texts: Sequence[str], *, keep: str = "start") -> np.ndarray:
        """Vectors for ``texts`` (float32 ``(n, dim)``), embedding only unseen ones once each.

        ``keep='end'`` truncates long texts from the left (prompts).
        """
        texts = list(texts)
        keys = [text_key(f"text-{keep}", t) for t in texts]
        return self._lookup(keys, lambda idx: self.encoder.encode([texts[i] for i in idx], keep=keep))

    def embed_pairs(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Vectors of joint ``prompt [SEP] response`` inputs, cached like ``embed``."""
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses must have the same length")
        keys = [text_key("pair", p, r) for p, r in zip(prompts, responses)]
        return self._lookup(keys, lambda idx: self.encoder.encode_pairs(
            [prompts[i] for i in idx], [responses[i] for i in idx]))

    def compact(self) -> None:
        """Merge all shards into one (new shard first, then old files removed)."""
        self.refresh()
        if len(self._shards) <= 1:
            return
        keys = list(self._index)
        vecs = self._gather(keys)
        old = sorted(self._names)
        self._write_shard(keys, vecs)
        for name in old:
            for suffix in (".keys.npy", ".npy"):
                try:
                    (self.path / f"{name}{suffix}").unlink()
                except FileNotFoundError:
                    pass
        self._index, self._shards, self._names = {}, [], set()
        self.refresh()


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f"tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
