"""Preference exports go straight into TRL: ``DPOTrainer`` and ``RewardTrainer`` read them unconverted.

The data goes through the product's own path: an import (text pairs; TRL conversational rows with
multi-turn prompts and several-message responses, next to a text prompt), three annotators judging
every pair through the queue (a 2-1 split, a split with no majority, a tie majority), and
``export.write_preferences`` in each format. Each file or folder is loaded as TRL's documentation
says (``load_dataset("json" | "parquet")``, ``load_from_disk``) and handed to TRL's trainers, which
tokenise it (applying a chat template to conversational rows) and take an optimizer step on tiny
random models built from a config, with the bundled all-MiniLM-L6-v2 tokenizer: nothing is
downloaded. TRL is a dev dependency: if it is missing these tests fail, they are never skipped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import torch  # noqa: E402
import trl  # noqa: E402  (a dev dependency: an ImportError fails this module, it is not skipped)

from annotate import export, ingest, judgments, queue  # noqa: E402
from annotate.campaign import get_options  # noqa: E402
from annotate.db import Database, create_db_engine  # noqa: E402
from annotate.settings import load_settings  # noqa: E402
from tests.factories import make_user  # noqa: E402
from tests.test_export import hf_offline  # noqa: E402,F401  (autouse: datasets stays offline, under tmp_path)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

GOOD, BAD = "careful", "sloppy"
"""Every response says which it is: annotators prefer the careful one, and the tests find it in token ids."""
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
END = "<|end|>"
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
FORMATS = ("jsonl", "parquet", "datasets")


# --------------------------------------------------------------------------- data through the service layer


def _text_files() -> list[list[dict]]:
    """Text prompts: a pairs file (some rows with ids and a tag, others without: null / "" in the exports)
    and a TRL standard file whose completions start with the space that joins them to the prompt."""
    pairs = []
    for i in range(6):
        a, b = f"{GOOD} answer {i} with steps", f"{BAD} reply {i}"
        if i % 2:
            a, b = b, a
        row = {"prompt": f"Explain topic {i}.", "response_a": a, "response_b": b}
        if i < 3:
            row.update(id=f"pair-{i}", prompt_id=f"prompt-{i}", response_a_id=f"r{i}a", response_b_id=f"r{i}b",
                       source="tagged")
        pairs.append(row)
    standard = [{"prompt": f"The {thing} is", "chosen": f" {colour}, say the {GOOD}.",
                 "rejected": f" grey, say the {BAD}."} for thing, colour in (("sky", "blue"), ("grass", "green"))]
    return [pairs, standard]


def _chat_files() -> list[list[dict]]:
    """TRL conversational rows: multi-turn prompts (a system turn, an earlier assistant turn), responses of one
    or several messages, and one text prompt, so the export mixes chats and text."""
    rows = []
    for i in range(5):
        prompt = [{"role": "system", "content": f"Be helpful {i}."},
                  {"role": "user", "content": f"Question {i}?"},
                  {"role": "assistant", "content": "Which part?"},
                  {"role": "user", "content": f"All of {i}."}]
        good = [{"role": "assistant", "content": f"{GOOD} answer {i}"}]
        if i % 2 == 0:  # a completion that goes on past one assistant turn
            good += [{"role": "user", "content": f"Thanks {i}"}, {"role": "assistant", "content": f"{GOOD} more"}]
        rows.append({"prompt": prompt, "chosen": good,
                     "rejected": [{"role": "assistant", "content": f"{BAD} reply {i}"}], "id": f"chat-{i}"})
    rows.append({"prompt": "A text prompt among chats.", "chosen": f"{GOOD} answer text",
                 "rejected": f"{BAD} reply text"})
    return [rows]


VOTES = {1: ("good", "good", "bad"), 2: ("good", "bad", "tie"), 3: ("tie", "tie", "good")}
"""What annotators 0, 1 and 2 say of the prompt numbered 1, 2 or 3 (a 2-1 majority; a three-way split and a
tie majority, neither exported); every other prompt is unanimous for the careful response."""
NOT_EXPORTED = 2


def _press(annotator: int, shown: queue.Assignment) -> str:
    number = re.search(r"\d+", shown.prompt_text or json.dumps(shown.prompt_messages))
    vote = VOTES.get(int(number.group()) if number else None, ("good",) * 3)[annotator]
    good_left = GOOD in shown.left_text
    return {"good": "left" if good_left else "right", "bad": "right" if good_left else "left", "tie": "tie"}[vote]


def _judge_everything(db, settings, annotators) -> None:
    """Each annotator judges every pair the queue serves, as :data:`VOTES` says, with a strength."""
    for k, annotator in enumerate(annotators):
        while True:
            with db.begin() as s:
                shown = queue.next_comparison(s, settings, get_options(s, settings), actor=annotator)
                if shown is None:
                    break
                press = _press(k, shown)
                judgments.submit(s, settings, actor=annotator, comparison_id=shown.comparison_id, shown=press,
                                 strength=None if press == "tie" else 1 + (shown.comparison_id + k) % 3)


@pytest.fixture(scope="module", params=["text", "chat"])
def exports(request, tmp_path_factory, sqlite_template):
    """``(kind, {format: path}, exported, wanted)``: imports judged by three annotators and exported in every
    format (with ``margin``); ``exported`` is :func:`export.preference_rows`, ``wanted`` what each of its rows
    should be, in TRL's format, from the imported file (so an export that changed a role would not match)."""
    kind = request.param
    base = tmp_path_factory.mktemp(f"trl-{kind}")
    shutil.copy(sqlite_template, base / "prefloop.db")
    settings = dataclasses.replace(
        load_settings(environ={}, data_dir=base / "data", database_url=f"sqlite:///{base / 'prefloop.db'}",
                      env="test"), gold_rate=0.0, probe_rate=0.0)
    db = Database(create_db_engine(settings.sqlalchemy_url))
    files = _text_files() if kind == "text" else _chat_files()
    with db.begin() as s:
        admin = make_user(s, "boss", "admin")
        annotators = [make_user(s, f"ann{k}") for k in range(3)]
        for n, rows in enumerate(files):
            data = "".join(json.dumps(r) + "\n" for r in rows).encode()
            ingest.import_file(s, settings, data, filename=f"{kind}-{n}.jsonl", actor=admin,
                               known_winner="ignore", overlap=3)
    _judge_everything(db, settings, annotators)
    paths = {fmt: base / f"export-{fmt}" for fmt in FORMATS}
    with db.begin() as s:
        for fmt in FORMATS:
            export.write_preferences(s, paths[fmt], actor=admin, format=fmt, margin=True)
            if fmt != "datasets":  # the Export page's download is the same file
                assert export.preferences_bytes(s, actor=admin, format=fmt, margin=True) == paths[fmt].read_bytes()
        exported = export.preference_rows(s, actor=admin, margin=True)
    db.dispose()
    # The data is what the tests say it is: majorities only, a 2-1 vote among them, chats of every shape.
    assert len(exported) == sum(map(len, files)) - NOT_EXPORTED
    assert any(r["agreement"] == pytest.approx(2 / 3) for r in exported)
    sources = {_contents(row["prompt"]): row for rows in files for row in (_as_trl(r, kind == "chat") for r in rows)}
    wanted = [sources[_contents(r["prompt"])] for r in exported]
    if kind == "chat":
        assert {len(r["chosen"]) for r in wanted} == {1, 3} and {len(r["prompt"]) for r in wanted} == {1, 4}
    return kind, paths, exported, wanted


def _as_trl(row: dict, chat: bool) -> dict:
    """An imported row as the export should give it back: the careful response chosen; in a chat export, text
    as a user prompt and one assistant message."""
    if "response_a" in row:
        good, bad = sorted((row["response_a"], row["response_b"]), key=lambda text: GOOD not in text)
        row = {"prompt": row["prompt"], "chosen": good, "rejected": bad}
    if not chat:
        return row
    as_chat = {"prompt": "user", "chosen": "assistant", "rejected": "assistant"}
    return {key: [{"role": role, "content": row[key]}] if isinstance(row[key], str) else row[key]
            for key, role in as_chat.items()}


def _contents(prompt) -> str:
    """A prompt's text whatever its roles: the key that finds an exported row's source."""
    return prompt if isinstance(prompt, str) else "\x1f".join(m["content"] for m in prompt)


def _load(fmt: str, path) -> datasets.Dataset:
    """The export loaded as TRL's documentation loads a dataset."""
    if fmt == "jsonl":
        return datasets.load_dataset("json", data_files=str(path), split="train")
    if fmt == "parquet":
        return datasets.load_dataset("parquet", data_files=str(path), split="train")
    return datasets.load_from_disk(str(path))


# --------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="module")
def tokenizer():
    """The bundled MiniLM tokenizer made a causal LM's: role markers, a chat template, an EOS token, and no
    ``[CLS]``/``[SEP]`` around each text (TRL splits prompt from completion by the prompt's own tokens)."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    from rm.encoder import default_model_path

    tok = AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1")
    tok.add_special_tokens({"eos_token": END, "additional_special_tokens": list(ROLE_TOKENS)})
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the models are tiny, and the machine's cores are shared with other tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _llama_config(tok, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None, **extra)


def _common_args(tmp_path) -> dict:
    return dict(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=8, learning_rate=1e-3,
                report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, bf16=False,
                gradient_checkpointing=False, dataloader_num_workers=0, seed=0, max_length=128)


def _role_ids(tok, ids) -> list[str]:
    markers = {tok.convert_tokens_to_ids(t): t for t in ROLE_TOKENS}
    return [markers[i] for i in ids if i in markers]


def _roles(messages) -> list[str]:
    return [f"<|{m['role']}|>" for m in messages]


# --------------------------------------------------------------------------- the trainers


@pytest.mark.parametrize("fmt", FORMATS)
def test_dpo_trainer_reads_the_export(exports, fmt, tokenizer, tmp_path):
    from transformers import LlamaForCausalLM

    kind, paths, exported, wanted = exports
    dataset = _load(fmt, paths[fmt])
    torch.manual_seed(0)
    model = LlamaForCausalLM(_llama_config(tokenizer))
    ref = LlamaForCausalLM(_llama_config(tokenizer))
    trainer = trl.DPOTrainer(model=model, ref_model=ref, args=trl.DPOConfig(**_common_args(tmp_path)),
                             train_dataset=dataset, processing_class=tokenizer)

    processed = trainer.train_dataset
    assert len(processed) == len(exported)
    for row, src in zip(processed, wanted, strict=True):
        chosen, rejected = tokenizer.decode(row["chosen_ids"]), tokenizer.decode(row["rejected_ids"])
        assert GOOD in chosen and BAD not in chosen and BAD in rejected and GOOD not in rejected
        if kind == "chat":
            assert _role_ids(tokenizer, row["prompt_ids"]) == _roles(src["prompt"]) + ["<|assistant|>"]
            # The generation prompt opened the first assistant turn; later turns keep their roles.
            for side in ("chosen", "rejected"):
                assert _role_ids(tokenizer, row[f"{side}_ids"]) == _roles(src[side])[1:]
        else:
            assert tokenizer.decode(row["prompt_ids"], skip_special_tokens=True) == src["prompt"].lower()
            if src["chosen"].startswith(" "):  # TRL joins prompt and completion as they are: the space survives
                text = tokenizer.decode(row["prompt_ids"] + row["chosen_ids"], skip_special_tokens=True)
                assert text == (src["prompt"] + src["chosen"]).lower()
    result = trainer.train()
    assert math.isfinite(result.training_loss)


@pytest.mark.parametrize("fmt", FORMATS)
def test_reward_trainer_reads_the_export(exports, fmt, tokenizer, tmp_path):
    from transformers import LlamaForSequenceClassification

    kind, paths, exported, wanted = exports
    dataset = _load(fmt, paths[fmt])
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(_llama_config(tokenizer, num_labels=1))
    trainer = trl.RewardTrainer(model=model, args=trl.RewardConfig(**_common_args(tmp_path)),
                                train_dataset=dataset, processing_class=tokenizer)
    processed = trainer.train_dataset
    assert len(processed) == len(exported)
    for row, ex, src in zip(processed, exported, wanted, strict=True):
        chosen, rejected = tokenizer.decode(row["chosen_ids"]), tokenizer.decode(row["rejected_ids"])
        assert GOOD in chosen and BAD not in chosen and BAD in rejected and GOOD not in rejected
        assert row["margin"] == ex["margin"] > 0  # the trainer's loss reads it
        if kind == "text":  # the prompt is part of each sequence the reward model scores
            assert tokenizer.decode(row["chosen_ids"], skip_special_tokens=True).startswith(src["prompt"].lower())
        else:
            assert _role_ids(tokenizer, row["chosen_ids"]) == _roles(src["prompt"] + src["chosen"])
            assert _role_ids(tokenizer, row["rejected_ids"]) == _roles(src["prompt"] + src["rejected"])
    result = trainer.train()
    assert math.isfinite(result.training_loss)
