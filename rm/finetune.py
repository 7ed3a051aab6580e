"""Full fine-tune: encoder + scalar head trained end to end on preference pairs.

The result is saved as a Hugging Face ``AutoModelForSequenceClassification``
(``num_labels=1``) plus its tokenizer, so TRL and transformers load it directly.
Inputs are a tokenizer's pair encoding, ``[CLS] prompt-tail [SEP] response [SEP]``
with ``token_type_ids`` 0 on ``[CLS] prompt-tail [SEP]`` and 1 on ``response [SEP]``
(for tokenizers that return token type ids, as BERT's do); prompts lose their
start, as in ``rm.encoder``. The saved tokenizer truncates from the left and its
``model_max_length`` is ``FinetuneConfig.max_length``, so with plain transformers::

    model = AutoModelForSequenceClassification.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    reward = model(**tok(render_prompt(prompt), response, truncation="only_first",
                         return_tensors="pt")).logits[:, 0]

gives the rewards :func:`score_pairs_model` gives (``rm.features.render_prompt``
turns a chat into the text trained on; a text prompt is passed as it is),
whenever the response keeps all its tokens: it fits in ``max_length`` less the
3 special tokens and less the prompt's reserve (``prompt_share`` of that budget,
or the whole prompt when shorter). A longer response is cut at its *end* by
prefloop, which no tokenizer call with left truncation does; score such pairs
with :func:`score_pairs_model` (or cut the response first).
Uses CUDA when available; on CPU it works but is slow (~30 s per 100 pairs for
MiniLM-L6 on 2 cores).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rm.encoder import pair_token_segments  # noqa: E402
from rm.features import Prompt, render_prompt  # noqa: E402
from rm.train import preference_loss  # noqa: E402

INFO_FILE = "prefloop_finetune.json"


@dataclass
class FinetuneConfig:
    """Options of the end-to-end fine-tune. These field docs are the one place they are documented.

    Attributes:
        epochs: Passes over the pairs.
        batch_size: Pairs per optimiser step (2 × batch_size sequences per forward).
        lr: AdamW peak learning rate (linear warm-up, then linear decay to 0).
        weight_decay: AdamW decoupled weight decay.
        warmup_ratio: Share of steps spent warming up.
        max_length: Tokens per (prompt, response) input.
        prompt_share: Budget share the prompt keeps when the response is long.
        strength_margins: Same meaning as ``rm.train.TrainConfig.strength_margins``.
        seed: Seeds the head initialisation, the pair order and dropout (same seed, same model on one device).
        num_threads: ``torch.set_num_threads`` on CPU.
        device: ``"cuda"``, ``"cpu"``…; ``None`` picks CUDA when available.
    """

    epochs: int = 1
    batch_size: int = 16
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_length: int = 256
    prompt_share: float = 0.25
    strength_margins: tuple[float, float, float, float] = (0.0, 0.1, 0.5, 1.0)
    seed: int = 0
    num_threads: int = 2
    device: str | None = None


def _batch(tokenizer, prompts, responses, max_length, prompt_share, device) -> dict:
    """Model inputs as ``tokenizer(prompt, response, padding=True)`` gives them: ``input_ids``,
    ``attention_mask`` and, where the tokenizer has them, ``token_type_ids`` (0 prompt part, 1 response part)."""
    pairs = pair_token_segments(tokenizer, [render_prompt(p) for p in prompts], list(responses),
                                max_length, prompt_share)
    width = max(len(x) for x, _ in pairs)
    pad = tokenizer.pad_token_id or 0
    input_ids = torch.full((len(pairs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    types = torch.zeros((len(pairs), width), dtype=torch.long)  # padding is type 0, as a tokenizer pads it
    for i, (x, n_first) in enumerate(pairs):
        input_ids[i, :len(x)] = torch.tensor(x)
        mask[i, :len(x)] = 1
        types[i, n_first:len(x)] = 1
    batch = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
    if "token_type_ids" in tokenizer.model_input_names:
        batch["token_type_ids"] = types.to(device)
    return batch


def _default_max_length(tokenizer) -> int:
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if isinstance(n, int) and 0 < n < 1_000_000 else 256  # unset: transformers' huge sentinel


def score_pairs_model(model, tokenizer, prompts: Sequence[Prompt], responses: Sequence[str], *,
                      max_length: int | None = None, prompt_share: float = 0.25,
                      batch_size: int = 32) -> np.ndarray:
    """Scalar rewards ``(n,)`` float32 from a sequence-classification reward model (eval mode).

    Inputs are built as in training. ``max_length`` defaults to the tokenizer's
    ``model_max_length``, which a saved fine-tune sets to its ``FinetuneConfig.max_length``
    (256 when the tokenizer sets none); pass the fine-tune's ``prompt_share`` if it was not 0.25.
    """
    if max_length is None:
        max_length = _default_max_length(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.zeros(len(responses), dtype=np.float32)
    try:
        with torch.inference_mode():
            for s in range(0, len(responses), batch_size):
                batch = _batch(tokenizer, prompts[s:s + batch_size], responses[s:s + batch_size],
                               max_length, prompt_share, device)
                out[s:s + batch_size] = model(**batch).logits[:, 0].float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def load_finetuned(path: str | os.PathLike, device: str | None = None):
    """``(model, tokenizer)`` of a saved fine-tune (plain transformers loading)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    return model, tok


def finetune(model_path: str | os.PathLike, prompts: Sequence[Prompt], chosen: Sequence[str],
             rejected: Sequence[str], output_dir: str | os.PathLike, config: FinetuneConfig | None = None,
             *, strength: Sequence[int] | None = None):
    """Fine-tune ``model_path`` on (prompt, chosen, rejected) and save it to ``output_dir``.

    Loss per pair: ``-log σ(r_chosen - r_rejected - margin)`` (margin from
    ``strength``). The directory is written to a temporary sibling and renamed
    into place. Returns ``(model, tokenizer)`` in eval mode. On CPU it trains with
    ``config.num_threads`` torch threads and restores the caller's count after.
    """
    config = config or FinetuneConfig()
    n = len(prompts)
    if not (n == len(chosen) == len(rejected)) or n == 0:
        raise ValueError("prompts, chosen and rejected must be non-empty and of the same length")
    out = Path(output_dir)
    if out.exists():  # before training, not after it
        raise FileExistsError(f"{out} already exists; choose a new directory for the fine-tuned model")
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    previous_threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(config.num_threads)
    try:
        return _finetune(model_path, prompts, chosen, rejected, out, config, strength, device)
    finally:
        torch.set_num_threads(previous_threads)


def _finetune(model_path, prompts, chosen, rejected, out: Path, config: FinetuneConfig, strength, device):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    n = len(prompts)
    tok = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # transformers initialises new heads from the global RNG
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_path), num_labels=1, local_files_only=True)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model.to(device).train()

    margins = np.asarray(config.strength_margins, dtype=np.float32)
    s = np.zeros(n, dtype=np.int64) if strength is None else np.clip(np.asarray(strength, dtype=np.int64), 0, 3)
    rng = np.random.default_rng(config.seed)
    steps = config.epochs * math.ceil(n / config.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warm = max(1, int(steps * config.warmup_ratio))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min((i + 1) / warm, max(0.0, (steps - i) / max(1, steps - warm))))
    t0, losses = time.perf_counter(), []
    # Dropout draws from torch's global generator: seed it for the run (reproducible under a seed),
    # in a fork so the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[] if str(device) == "cpu" else None):
        torch.manual_seed(config.seed)
        for _ in range(config.epochs):
            order = rng.permutation(n)
            for b in range(0, n, config.batch_size):
                idx = order[b:b + config.batch_size]
                ps = [prompts[i] for i in idx]
                batch = _batch(tok, ps + ps, [chosen[i] for i in idx] + [rejected[i] for i in idx],
                               config.max_length, config.prompt_share, device)
                r = model(**batch).logits[:, 0]
                d = r[:len(idx)] - r[len(idx):]
                loss = preference_loss(d, torch.zeros(len(idx), dtype=torch.long, device=device),
                                       torch.from_numpy(margins[s[idx]]).to(device)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
    model.eval()

    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new directory for the fine-tuned model")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"
    try:
        tok.truncation_side = "left"
        tok.model_max_length = config.max_length  # tok(prompt, response, truncation=...) cuts where training did
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / INFO_FILE).write_text(json.dumps({
            "config": asdict(config), "n_pairs": n, "steps": steps, "device": device,
            "train_seconds": round(time.perf_counter() - t0, 2),
            "final_loss": float(np.mean(losses[-10:])) if losses else None,
            "base_model": str(model_path),
            "token_type_ids": "token_type_ids" in tok.model_input_names}, indent=2))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model, tok
