"""rm.load + RewardModel.score end to end on a tiny encoder."""

import numpy as np
import pytest

import rm
from rm.artifact import ArtifactError, save_artifact
from rm.cache import EmbeddingCache
from rm.data import PairData
from rm.encoder import Encoder, EncoderConfig
from rm.features import FeatureSpec, build_features
from rm.train import TrainConfig, train_ensemble


@pytest.fixture
def trained(tiny_bert, tmp_path):
    enc = Encoder(tiny_bert, EncoderConfig(layers=(-1, -2)))
    spec = FeatureSpec(("joint", "response"))
    prompts = [f"question number {i}" for i in range(30)]
    good = [f"a helpful polite answer {i}" for i in range(30)]
    bad = [f"go away {i}" for i in range(30)]
    cache = EmbeddingCache(tmp_path / "cache", enc)
    feat = build_features(prompts + prompts, good + bad, cache, spec)
    data = PairData(feat, np.arange(30), np.arange(30, 60), np.zeros(30), group=np.array(prompts))
    ens = train_ensemble(data, TrainConfig(n_members=3), seed=0)
    save_artifact(tmp_path / "model", ens, encoder=enc.describe(), features=spec)
    return tmp_path, enc, prompts, good, bad, ens, feat


def test_load_and_score(trained):
    tmp_path, enc, prompts, good, bad, ens, feat = trained
    model = rm.load(tmp_path / "model", cache_dir=tmp_path / "cache")
    assert model._encoder is None  # lazy
    s = model.score(prompts[:5], good[:5])
    assert s.reward.shape == (5,) and s.uncertainty.shape == (5,) and s.members.shape == (3, 5)
    np.testing.assert_allclose(s.members, ens.member_rewards(feat[:5]), rtol=1e-5, atol=1e-5)
    # reward: the members' mean; uncertainty: their standard deviation (differing members: not 0)
    np.testing.assert_allclose(s.reward, s.members.mean(0), rtol=1e-6)
    np.testing.assert_allclose(s.uncertainty, s.members.std(0), rtol=1e-6)
    assert (s.uncertainty > 0).all()
    assert model.encoder.n_encoded == 0  # everything came from the cache
    s_bad = model.score(prompts[:5], bad[:5])
    assert (s.reward > s_bad.reward).all()
    p = model.pair_probabilities(model.score(prompts[:2] * 2, good[:2] + bad[:2]), [0, 1], [2, 3])
    assert p.shape == (3, 2) and (p > 0.5).all()


def test_chat_prompts_score_like_their_rendered_text_and_text_like_one_user_turn(trained):
    tmp_path, *_ = trained
    model = rm.load(tmp_path / "model")
    chat = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "bye"}]
    rendered = "\n\nHuman: hello\n\nAssistant: hi\n\nHuman: bye"
    np.testing.assert_allclose(model.featurize([chat], ["see you"]), model.featurize([rendered], ["see you"]))
    np.testing.assert_allclose(model.score([chat], ["see you"]).reward, model.score([rendered], ["see you"]).reward)
    # score() takes prompts as given: a text prompt is the chat of one user turn, as the app trains on it.
    a = model.score([[{"role": "user", "content": "hello"}]], ["hi there"]).reward
    b = model.score(["hello"], ["hi there"]).reward
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert model.score([chat], ["see you"]).reward != pytest.approx(model.score(["bye"], ["see you"]).reward)


def test_wrong_encoder_override_is_refused(trained, tiny_bert_other):
    tmp_path, *_ = trained
    model = rm.load(tmp_path / "model", encoder=tiny_bert_other)
    with pytest.raises(ArtifactError, match="trained on encoder"):
        model.score(["p"], ["r"])


def test_artifacts_from_before_layer_pooling_load_as_concatenated_layers(tiny_bert, tmp_path):
    # Artifacts written before EncoderConfig.layer_pooling existed have no such key and
    # concatenated their layers; their encoder id must still match.
    enc = Encoder(tiny_bert, EncoderConfig(layers=(-1, -2), layer_pooling="concat"))
    desc = enc.describe()
    del desc["config"]["layer_pooling"]
    prompts, responses = ["q1", "q2", "q3", "q4"], ["yes", "no", "maybe", "never"]
    feat = build_features(prompts, responses, enc)
    data = PairData(feat, np.array([0, 2]), np.array([1, 3]), np.zeros(2), group=np.array(["a", "b"]))
    ens = train_ensemble(data, TrainConfig(n_members=2), seed=0)
    save_artifact(tmp_path / "old", ens, encoder=desc, features=FeatureSpec())
    model = rm.load(tmp_path / "old")
    np.testing.assert_allclose(model.score_features(model.featurize(prompts, responses)).members,
                               ens.member_rewards(feat), rtol=1e-5, atol=1e-5)
    assert model.encoder.config.layer_pooling == "concat" and model.encoder.encoder_id == enc.encoder_id


def test_artifact_with_encoder_options_from_a_newer_version_is_a_clear_error(trained):
    # A newer prefloop may record EncoderConfig options this one lacks: say so as an
    # ArtifactError (shown to users), not a TypeError traceback.
    tmp_path, enc, *_ = trained
    ens = rm.load(tmp_path / "model").ensemble
    desc = enc.describe()
    desc["config"]["pooling_from_the_future"] = "cls"
    save_artifact(tmp_path / "newer", ens, encoder=desc, features=FeatureSpec(("joint", "response")))
    model = rm.load(tmp_path / "newer")
    with pytest.raises(ArtifactError, match="upgrade prefloop"):
        model.score(["p"], ["r"])
