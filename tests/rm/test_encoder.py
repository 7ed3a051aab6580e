"""Encoder: truncation, pooling, ids; the real bundled encoder against sentence-transformers."""

import numpy as np
import pytest

from rm.encoder import Encoder, EncoderConfig
from rm.features import FeatureSpec, as_chat, build_features, render_prompt


def test_left_truncation_keeps_the_end_of_a_long_chat(tiny_bert):
    enc = Encoder(tiny_bert, EncoderConfig(max_length=32))
    tok = enc._load()[0]
    chat = [{"role": "user", "content": "apple " * 200}, {"role": "assistant", "content": "banana"},
            {"role": "user", "content": "final question about zebras"}]
    text = render_prompt(chat)
    ids = enc.tokenize_texts([text], keep="end")[0]
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert len(ids) == 32 and decoded.endswith("final question about zebras")
    assert "apple" in decoded  # the start was cut, not the end
    pair = enc.tokenize_pairs([text], ["the response stays whole"])[0]
    decoded = tok.decode(pair, skip_special_tokens=True)
    assert len(pair) == 32 and decoded.endswith("zebras the response stays whole")


def test_long_response_keeps_its_start_and_some_prompt(tiny_bert):
    enc = Encoder(tiny_bert, EncoderConfig(max_length=40, prompt_share=0.25))
    tok = enc._load()[0]
    ids = enc.tokenize_pairs(["the prompt ends here"], ["start of answer " + "word " * 100])[0]
    text = tok.decode(ids, skip_special_tokens=True)
    assert len(ids) == 40 and "prompt ends here" in text and "start of answer" in text


def test_render_prompt_formats_and_validates_chat():
    assert render_prompt("plain") == "\n\nHuman: plain"  # a text prompt is the chat of one user turn
    assert render_prompt([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "yo"}]) == "\n\nSystem: s\n\nHuman: hi\n\nAssistant: yo"
    with pytest.raises(ValueError, match="unknown role"):
        render_prompt([{"role": "robot", "content": "x"}])
    # A text prompt is the chat of one user turn (import takes them as one): one rendering, one reward.
    egg = "How do I boil an egg?"
    assert render_prompt(as_chat(egg)) == render_prompt([{"role": "user", "content": egg}]) == f"\n\nHuman: {egg}"
    chat = [{"role": "system", "content": "s"}]
    assert as_chat(chat) is chat
    assert as_chat("\n\nHuman: hi\n\nAssistant: yo") == "\n\nHuman: hi\n\nAssistant: yo"  # already a transcript
    assert as_chat("Human: hi") == [{"role": "user", "content": "Human: hi"}]


def test_encoder_id_changes_with_options_and_weights(tiny_bert, tiny_bert_other):
    a = Encoder(tiny_bert).encoder_id
    assert a == Encoder(tiny_bert).encoder_id
    assert a != Encoder(tiny_bert, EncoderConfig(max_length=128)).encoder_id
    assert a != Encoder(tiny_bert, EncoderConfig(layers=(-1, -2))).encoder_id
    assert a != Encoder(tiny_bert_other).encoder_id


def test_vectors_are_order_independent_and_multi_layer(tiny_bert):
    enc = Encoder(tiny_bert, EncoderConfig(layers=(-1, -2), layer_pooling="concat"))
    texts = ["short", "a much longer text with many more words in it", "medium length text"]
    v = enc.encode(texts)
    assert v.shape == (3, enc.dim) and enc.dim == 64
    np.testing.assert_allclose(np.linalg.norm(v[:, :32], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(enc.encode(texts[::-1])[::-1], v, atol=1e-5)
    np.testing.assert_allclose(enc.encode([texts[1]])[0], v[1], atol=1e-5)


def test_layer_mean_is_the_average_of_the_concatenated_layers(tiny_bert):
    texts = ["short", "a much longer text with many more words in it"]
    concat = Encoder(tiny_bert, EncoderConfig(layers=(-1, -2, -3), layer_pooling="concat"))
    mean = Encoder(tiny_bert, EncoderConfig(layers=(-1, -2, -3), layer_pooling="mean"))
    assert mean.dim == 32 and concat.dim == 96 and mean.encoder_id != concat.encoder_id
    np.testing.assert_allclose(mean.encode(texts), concat.encode(texts).reshape(2, 3, 32).mean(1), atol=1e-6)
    with pytest.raises(Exception, match="layer_pooling"):
        Encoder(tiny_bert, EncoderConfig(layer_pooling="max"))


def test_features_concatenate_parts(tiny_bert):
    enc = Encoder(tiny_bert)
    spec = FeatureSpec(("joint", "response", "prompt_x_response"))
    f = build_features(["p1", [{"role": "user", "content": "p2"}]], ["r1", "r2"], enc, spec)
    assert f.shape == (2, spec.dim(enc.dim))
    np.testing.assert_allclose(f[:, enc.dim:2 * enc.dim], enc.encode(["r1", "r2"]), atol=1e-6)


def test_missing_model_directory_or_bad_layers_are_clear_errors(tmp_path, tiny_bert):
    from rm.encoder import EncoderError

    with pytest.raises(EncoderError, match="config.json"):
        Encoder(tmp_path)
    with pytest.raises(EncoderError, match="has 4 layers"):
        Encoder(tiny_bert, EncoderConfig(layers=(-1, -9)))


@pytest.mark.slow
def test_bundled_encoder_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    enc = Encoder(config=EncoderConfig(layers=(-1,)))
    texts = ["I can't help with that.", "Sure, here is a recipe for a cake with eggs and flour. " * 3]
    st = SentenceTransformer(str(enc.model_path), device="cpu")
    np.testing.assert_allclose(enc.encode(texts), st.encode(texts), atol=1e-5)
    multi = Encoder(config=EncoderConfig(layers=(-1, -2), layer_pooling="concat"))
    np.testing.assert_allclose(multi.encode(texts)[:, :384], st.encode(texts), atol=1e-5)


def test_encoder_id_changes_with_the_weights_of_a_sharded_checkpoint(tiny_bert, tmp_path):
    # Two sharded copies of one model that differ only in their weights must not share
    # an id (which names their embedding cache and is checked when an artifact loads).
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(tiny_bert), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(tiny_bert), local_files_only=True)
    model.save_pretrained(str(tmp_path / "a"), max_shard_size="200KB")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "encoder.layer.2." in name:
                p.add_(1.0)
    model.save_pretrained(str(tmp_path / "b"), max_shard_size="200KB")
    for d in ("a", "b"):
        tok.save_pretrained(str(tmp_path / d))
    assert len(list((tmp_path / "a").glob("model-*.safetensors"))) > 1
    a, b = Encoder(tmp_path / "a"), Encoder(tmp_path / "b")
    assert np.abs(a.encode(["same text"]) - b.encode(["same text"])).max() > 1e-3
    assert a.encoder_id != b.encoder_id
    assert a.encoder_id == Encoder(tmp_path / "a").encoder_id


@pytest.fixture
def memo_home(tmp_path, monkeypatch):
    """A private sidecar for full-weight hashes; files memoised as soon as they are hashed."""
    import rm.encoder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(rm.encoder, "_MEMO_SETTLE_NS", 0, raising=False)
    return tmp_path / "xdg" / "prefloop" / "weight-sha256.json"


def test_weights_that_differ_only_in_the_middle_get_different_ids(tiny_bert, tmp_path, memo_home):
    # The fingerprint hashed the size and the first and last MiB of each weight file, so a
    # fine-tune that changed only the middle shared the id, and with it the cached embeddings.
    from tests.rm.weights import middle_twins, same_edges

    a, b, word = middle_twins(tiny_bert, tmp_path)
    assert same_edges(a / "model.safetensors", b / "model.safetensors")
    enc_a, enc_b = Encoder(a), Encoder(b)
    assert np.abs(enc_a.encode([word]) - enc_b.encode([word])).max() > 1e-3
    assert enc_a.encoder_id != enc_b.encoder_id
    assert Encoder(a).encoder_id == enc_a.encoder_id and Encoder(b).encoder_id == enc_b.encoder_id


def test_an_unchanged_model_keeps_its_id_and_another_process_reads_the_memo(tiny_bert, tmp_path, memo_home):
    import json
    import os
    import shutil
    import subprocess
    import sys

    shutil.copytree(tiny_bert, tmp_path / "m")
    first = Encoder(tmp_path / "m").encoder_id
    assert Encoder(tmp_path / "m").encoder_id == first
    memo = json.loads(memo_home.read_text())
    assert list(memo) == [str((tmp_path / "m" / "model.safetensors").resolve())]
    # Another process finds the full hash in the sidecar: it never reads the whole file.
    code = ("import hashlib, sys, rm.encoder\n"
            "def refuse(*a, **k): raise AssertionError('hashed the whole file again')\n"
            "hashlib.file_digest = refuse\n"
            "print(rm.encoder.Encoder(sys.argv[1]).encoder_id)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m")], capture_output=True, text=True,
                         env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == first


def test_a_rewrite_that_keeps_size_mtime_and_edges_changes_the_id(tiny_bert, tmp_path, memo_home):
    # The memo is keyed by inode, size, mtime and ctime: copying other weights over the file
    # with their mtime set to the old one (cp -p, rsync -t) still changes ctime.
    import os
    import shutil
    import time

    from tests.rm.weights import middle_twins, same_edges

    a, b, _ = middle_twins(tiny_bert, tmp_path)
    weights = a / "model.safetensors"
    assert same_edges(weights, b / "model.safetensors")
    before = os.stat(weights)
    old = Encoder(a).encoder_id
    time.sleep(0.05)  # past the file's last timestamp tick (the test memoises at once)
    os.utime(b / "model.safetensors", ns=(before.st_atime_ns, before.st_mtime_ns))
    shutil.copy2(b / "model.safetensors", weights)  # rewrites the same inode, keeps the mtime
    after = os.stat(weights)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert weights.read_bytes() == (b / "model.safetensors").read_bytes()
    assert Encoder(a).encoder_id != old
    assert Encoder(a).encoder_id == Encoder(b).encoder_id


def test_an_encoder_refuses_weights_that_changed_after_its_id(tiny_bert, tmp_path, memo_home):
    # Its vectors would be cached under the id of the weights it was created with.
    from rm.encoder import EncoderError
    from tests.rm.weights import middle_twins

    a, b, _ = middle_twins(tiny_bert, tmp_path)
    enc = Encoder(a)
    (a / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes())
    with pytest.raises(EncoderError, match="changed after this encoder's id"):
        enc.encode(["text"])
    assert Encoder(a).encode(["text"]).shape == (1, 32)


def test_the_bundled_encoder_and_small_weight_files_keep_their_ids(tiny_bert, monkeypatch, tmp_path, memo_home):
    # Existing artifacts name the bundled encoder's id and its cache directory holds its
    # embeddings: its content is known, so its id is what the first-and-last-MiB rule gave.
    # A weight file up to 2 MiB was read whole by that rule, and keeps its id too.
    import shutil

    import rm.encoder
    from rm.encoder import _edge_fingerprint, _encoder_id, default_model_path

    small = tmp_path / "small"
    shutil.copytree(tiny_bert, small)
    raw = (small / "model.safetensors").read_bytes()
    (small / "model.safetensors").write_bytes(raw[:(3 << 19)])  # an id needs no loadable weights
    new = {p: _encoder_id(p, EncoderConfig()) for p in (default_model_path(), small, tiny_bert)}
    monkeypatch.setattr(rm.encoder, "_file_fingerprint", _edge_fingerprint)
    old = {p: _encoder_id(p, EncoderConfig()) for p in new}
    assert new[default_model_path()] == old[default_model_path()]
    assert new[small] == old[small]
    assert new[tiny_bert] != old[tiny_bert]  # 4 MB: now hashed whole
