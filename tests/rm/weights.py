"""Model directories whose weight files differ only in the middle (for encoder-id tests)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

MIB = 1 << 20


def middle_twins(model_dir: Path, root: Path) -> tuple[Path, Path, str]:
    """Two copies ``a``, ``b`` of ``model_dir``; in ``b`` one word's embedding row is moved.

    That row lies between the first and the last MiB of ``model.safetensors``, so the
    two files have the same size and the same first and last MiB (a fine-tune that only
    touched the middle). Returns ``(a, b, word)``; ``word`` is the token whose row moved.
    """
    a, b = root / "a", root / "b"
    shutil.copytree(model_dir, a)
    shutil.copytree(model_dir, b)
    f = b / "model.safetensors"
    raw = bytearray(f.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    spec = json.loads(raw[8:8 + n])["embeddings.word_embeddings.weight"]
    start = 8 + n + spec["data_offsets"][0]
    row_bytes = 4 * spec["shape"][1]
    ids = json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    vocab = {i: token for token, i in ids.items()}
    row = (len(raw) // 2 - start) // row_bytes
    while not vocab[row].isalpha():
        row += 1
    off = start + row * row_bytes
    assert MIB <= off and off + row_bytes <= len(raw) - MIB, "the row is not in the middle of the file"
    vec = np.frombuffer(bytes(raw[off:off + row_bytes]), dtype="<f4")
    vec = vec + np.linspace(-1.0, 1.0, len(vec))  # not a constant shift, which LayerNorm removes
    raw[off:off + row_bytes] = vec.astype("<f4").tobytes()
    f.write_bytes(raw)
    return a, b, vocab[row]


def same_edges(x: Path, y: Path) -> bool:
    """Same size and the same first and last MiB, different content."""
    bx, by = x.read_bytes(), y.read_bytes()
    return len(bx) == len(by) and bx[:MIB] == by[:MIB] and bx[-MIB:] == by[-MIB:] and bx != by
