"""Full fine-tune export on a tiny random BERT."""

import numpy as np
import pytest
import torch

from rm.finetune import FinetuneConfig, finetune, load_finetuned, score_pairs_model


def test_finetune_exports_a_reloadable_sequence_classifier(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    prompts = [f"question {i}" for i in range(12)]
    chosen = ["a kind and helpful answer"] * 12
    rejected = ["no"] * 12
    cfg = FinetuneConfig(epochs=3, batch_size=4, lr=1e-3, max_length=32, device="cpu")
    model, tok = finetune(tiny_bert, prompts, chosen, rejected, tmp_path / "ft", cfg)
    before = score_pairs_model(model, tok, prompts, chosen, max_length=32)
    worse = score_pairs_model(model, tok, prompts, rejected, max_length=32)
    assert (before > worse).all()

    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "ft"), local_files_only=True)
    assert reloaded.config.num_labels == 1
    model2, tok2 = load_finetuned(tmp_path / "ft", device="cpu")
    after = score_pairs_model(model2, tok2, prompts, chosen, max_length=32)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    assert tok2.truncation_side == "left"
    with torch.inference_mode():
        enc = tok2(["question 0", "question 1"], ["a kind and helpful answer"] * 2, return_tensors="pt", padding=True)
        assert reloaded(**enc).logits.shape == (2, 1)


def test_existing_output_is_refused_before_training(tiny_bert, tmp_path, monkeypatch):
    # The check ran after the whole training run (hours on a real model), which it then threw away.
    from transformers import AutoModelForSequenceClassification

    (tmp_path / "ft").mkdir()

    def no_training(*a, **k):
        raise AssertionError("the model was loaded for training")

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", no_training)
    with pytest.raises(FileExistsError, match="already exists"):
        finetune(tiny_bert, ["q"], ["a"], ["b"], tmp_path / "ft", FinetuneConfig(device="cpu"))


def test_cpu_thread_count_is_restored(tiny_bert, tmp_path):
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    cfg = FinetuneConfig(epochs=1, batch_size=2, max_length=16, device="cpu", num_threads=wanted)
    finetune(tiny_bert, ["q1", "q2"], ["yes", "sure"], ["no", "nope"], tmp_path / "ft", cfg)
    assert torch.get_num_threads() == before


def test_the_same_seed_gives_the_same_model_and_leaves_the_callers_rng_alone(tiny_bert, tmp_path):
    """Dropout drew from torch's unseeded global generator, so two runs with one seed differed."""
    prompts = [f"question {i}" for i in range(8)]
    chosen, rejected = ["a kind and helpful answer"] * 8, ["no"] * 8
    cfg = FinetuneConfig(epochs=2, batch_size=4, lr=1e-3, max_length=32, device="cpu", seed=3)
    scores = []
    for run in ("a", "b"):
        torch.manual_seed(100 if run == "a" else 200)  # the caller's state differs between the runs
        state = torch.random.get_rng_state()
        model, tok = finetune(tiny_bert, prompts, chosen, rejected, tmp_path / run, cfg)
        assert torch.equal(torch.random.get_rng_state(), state)
        scores.append(score_pairs_model(model, tok, prompts, chosen, max_length=32))
    np.testing.assert_array_equal(scores[0], scores[1])


def test_plain_transformers_pair_encoding_gives_prefloops_scores(tiny_bert, tmp_path):
    """Training and score_pairs_model passed no token_type_ids (0 everywhere), so ``model(**tok(prompt,
    response))``, whose pair encoding puts type 1 on the response, scored every pair differently
    (0.0526 for prefloop's 0.0569 on MiniLM) from the same input ids."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rm.features import render_prompt

    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=1, local_files_only=True)
    long_prompt = " ".join(f"word{i}" for i in range(60))  # left-truncated: only its end fits in 32 tokens
    chat = [{"role": "user", "content": "How do I boil an egg?"}, {"role": "assistant", "content": "Soft or hard?"},
            {"role": "user", "content": "Hard."}]
    prompts = ["How do I boil an egg?", long_prompt, chat]
    chosen = ["Simmer it for 9 minutes.", "a kind and helpful answer", "Ten minutes, then cold water."]
    rejected = ["no", "no", "no"]
    # One optimiser step (all pairs in one batch), no weight decay: only what the loss reaches moves.
    cfg = FinetuneConfig(epochs=1, batch_size=4, lr=1e-3, weight_decay=0.0, max_length=32, device="cpu")
    finetune(tiny_bert, prompts, chosen, rejected, tmp_path / "ft", cfg)

    model, tok = load_finetuned(tmp_path / "ft", device="cpu")
    ours = score_pairs_model(model, tok, prompts, chosen)  # max_length from the saved tokenizer: 32
    np.testing.assert_allclose(ours, score_pairs_model(model, tok, prompts, chosen, max_length=32), atol=0)
    # Training saw the response's token type: its embedding row was trained.
    trained_type_1 = model.bert.embeddings.token_type_embeddings.weight[1]
    assert not torch.allclose(trained_type_1, base.bert.embeddings.token_type_embeddings.weight[1])

    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "ft"), local_files_only=True).eval()
    plain_tok = AutoTokenizer.from_pretrained(str(tmp_path / "ft"), local_files_only=True)
    texts = [render_prompt(p) for p in prompts]
    with torch.inference_mode():
        for text, response, score in zip(texts, chosen, ours):
            enc = plain_tok(text, response, truncation="only_first", return_tensors="pt")
            assert enc["token_type_ids"][0, -1] == 1
            assert float(reloaded(**enc).logits[0, 0]) == pytest.approx(float(score), abs=1e-5)
        batch = plain_tok(texts, chosen, truncation="only_first", padding=True, return_tensors="pt")
        assert batch["input_ids"].shape[1] == 32  # the long prompt lost its start
        np.testing.assert_allclose(reloaded(**batch).logits[:, 0].numpy(), ours, atol=1e-5)
        # The same ids with token type 0 everywhere (what training used to see) score differently.
        batch.pop("token_type_ids")
        assert not np.allclose(reloaded(**batch).logits[:, 0].numpy(), ours, atol=1e-4)
