"""The real bundled encoder on a real slice of HH-RLHF harmless."""

import numpy as np
import pytest

import rm
from rm.artifact import save_artifact
from rm.cache import EmbeddingCache
from rm.data import A_WINS, B_WINS, PairData
from rm.encoder import Encoder
from rm.features import FeatureSpec, build_features
from rm.split import held_out_mask
from rm.train import TrainConfig, fit_and_evaluate

N_ROWS = 400


@pytest.fixture(scope="module")
def hh_slice(hh_rows, tmp_path_factory):
    rows = hh_rows[:N_ROWS]
    prompts = [r[0] for r in rows]
    chosen = [r[1] for r in rows]
    rejected = [r[2] for r in rows]
    enc = Encoder()
    cache_dir = tmp_path_factory.mktemp("hh_cache")
    feat = build_features(prompts + prompts, chosen + rejected, EmbeddingCache(cache_dir, enc), FeatureSpec())
    n = len(rows)
    flip = np.random.default_rng(0).random(n) < 0.5
    c, r = np.arange(n), np.arange(n, 2 * n)
    data = PairData(feat, np.where(flip, r, c), np.where(flip, c, r), np.where(flip, B_WINS, A_WINS),
                    group=np.asarray(prompts, dtype=object), length=np.array([len(t) for t in chosen + rejected]))
    return data, enc, cache_dir, prompts, chosen, rejected


@pytest.mark.slow
def test_training_on_real_pairs_beats_chance_and_shuffled_labels(hh_slice):
    data, *_ = hh_slice
    test = held_out_mask(data.group, 0.3, salt="test_real")
    _, m = fit_and_evaluate(data.subset(~test), data.subset(test), TrainConfig(), seed=0)
    shuffled = data.subset(~test)
    shuffled.outcome = np.random.default_rng(1).permutation(shuffled.outcome)
    _, m_shuf = fit_and_evaluate(shuffled, data.subset(test), TrainConfig(), seed=0)
    assert m.n_decisive > 90
    assert m.accuracy > 0.55, m.summary()
    assert m.accuracy > m_shuf.accuracy, (m.accuracy, m_shuf.accuracy)
    assert m.ece < 0.15


@pytest.mark.slow
def test_saved_model_scores_like_the_trained_ensemble(hh_slice, tmp_path):
    data, enc, cache_dir, prompts, chosen, rejected = hh_slice
    ens, metrics = fit_and_evaluate(data, None, TrainConfig(n_members=2), seed=0)
    save_artifact(tmp_path / "v1", ens, encoder=enc.describe(), features=FeatureSpec(),
                  data_counts={"pairs": len(data)})
    model = rm.load(tmp_path / "v1", cache_dir=cache_dir)
    s = model.score(prompts[:20], chosen[:20])
    np.testing.assert_allclose(s.members, ens.member_rewards(data.feat[:20]), rtol=1e-4, atol=1e-4)
    assert model.encoder.n_encoded == 0
