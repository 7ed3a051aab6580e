"""The on-disk embedding cache."""

import numpy as np

from rm.cache import EmbeddingCache
from rm.encoder import Encoder, EncoderConfig

TWO = EncoderConfig(layers=(-1, -2))


def test_second_call_computes_nothing_and_reopening_keeps_vectors(tiny_bert, tmp_path):
    enc = Encoder(tiny_bert, TWO)
    cache = EmbeddingCache(tmp_path, enc)
    texts = ["alpha", "beta", "alpha", "gamma delta"]
    v1 = cache.embed(texts)
    assert enc.n_encoded == 3 and cache.n_computed == 3  # duplicates embedded once
    np.testing.assert_allclose(v1[0], v1[2])
    v2 = cache.embed(texts[::-1])
    assert enc.n_encoded == 3
    np.testing.assert_array_equal(v2[::-1], v1)

    enc2 = Encoder(tiny_bert, TWO)
    reopened = EmbeddingCache(tmp_path, enc2)
    np.testing.assert_array_equal(reopened.embed(texts), v1)
    assert enc2.n_encoded == 0 and len(reopened) == 3
    np.testing.assert_allclose(v1, enc.encode(texts), atol=1e-6)


def test_pairs_prompts_and_texts_are_separate_keys(tiny_bert, tmp_path):
    enc = Encoder(tiny_bert, TWO)
    cache = EmbeddingCache(tmp_path, enc)
    cache.embed(["x"])
    cache.embed(["x"], keep="end")
    cache.embed_pairs(["x"], ["y"])
    assert enc.n_encoded == 3
    cache.embed_pairs(["x"], ["y"])
    assert enc.n_encoded == 3


def test_different_encoders_never_mix(tiny_bert, tiny_bert_other, tmp_path):
    a, b = Encoder(tiny_bert, TWO), Encoder(tiny_bert_other, TWO)
    va = EmbeddingCache(tmp_path, a).embed(["same text"])
    vb = EmbeddingCache(tmp_path, b).embed(["same text"])
    assert b.n_encoded == 1 and va.shape[1] != vb.shape[1]
    assert len(list(tmp_path.iterdir())) == 2


def test_a_killed_write_leaves_only_ignorable_temporaries(tiny_bert, tmp_path):
    enc = Encoder(tiny_bert, TWO)
    cache = EmbeddingCache(tmp_path, enc)
    cache.embed(["one"])
    # What a process killed mid-write leaves: a temp file and a vectors file without its keys file.
    (cache.path / "tmp-dead-shard-x.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(cache.path / "shard-99999999999999999999-1-dead.npy", np.zeros((1, 32), np.float32))
    again = EmbeddingCache(tmp_path, Encoder(tiny_bert, TWO))
    assert len(again) == 1
    np.testing.assert_array_equal(again.embed(["one"]), cache.embed(["one"]))


def test_concurrent_writers_are_picked_up_and_compaction_keeps_everything(tiny_bert, tmp_path):
    a = EmbeddingCache(tmp_path, Encoder(tiny_bert, TWO), compact_above=3)
    b = EmbeddingCache(tmp_path, Encoder(tiny_bert, TWO))
    b.embed(["from b"])
    for i in range(5):
        a.embed([f"text {i}"])
    assert len(list(a.path.glob("shard-*.keys.npy"))) <= 3
    enc = Encoder(tiny_bert, TWO)
    fresh = EmbeddingCache(tmp_path, enc)
    fresh.embed(["from b"] + [f"text {i}" for i in range(5)])
    assert enc.n_encoded == 0


def test_texts_holding_nul_never_share_a_pair_key():
    """("a\\0b", "c") and ("a", "b\\0c") hashed the same bytes, so one pair could be served the
    other's cached embedding; real text (no NUL) keeps the key existing caches hold."""
    import hashlib

    from rm.cache import text_key

    assert text_key("pair", "a\x00b", "c") != text_key("pair", "a", "b\x00c")
    assert text_key("pair", "a\x00", "b") != text_key("pair", "a", "\x00b")
    old = hashlib.sha256(b"pair" + b"\x00" + "How?".encode() + b"\x00" + "Like this.".encode()).digest()
    assert text_key("pair", "How?", "Like this.") == old


def test_models_that_differ_only_in_the_middle_of_their_weights_never_share_vectors(tiny_bert, tmp_path,
                                                                                   monkeypatch):
    # They shared an encoder id (first and last MiB of the weights), so the second model was
    # served the first one's cached vectors without a word.
    from tests.rm.weights import middle_twins

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    a, b, word = middle_twins(tiny_bert, tmp_path / "models")
    enc_a, enc_b = Encoder(a, TWO), Encoder(b, TWO)
    EmbeddingCache(tmp_path / "cache", enc_a).embed([word])
    got = EmbeddingCache(tmp_path / "cache", enc_b).embed([word])
    np.testing.assert_allclose(got, enc_b.encode([word]), atol=1e-6)
    assert np.abs(got - enc_a.encode([word])).max() > 1e-3
