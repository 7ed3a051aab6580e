"""Artifacts: round trip, atomic save, clear errors for corrupt or incompatible ones."""

import json
import os

import numpy as np
import pytest

import rm
from rm.artifact import ArtifactError, load_artifact, save_artifact
from rm.features import FeatureSpec
from rm.heads import Ensemble

ENC = {"encoder_id": "bert-abc", "model_path": "/nowhere", "dim": 4, "config": {}}


def make_ensemble(hidden=0, m=3, d=8):
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(m, hidden or d)).astype(np.float32), "b": np.zeros(m, np.float32)}
    if hidden:
        params.update(w1=rng.normal(size=(m, d, hidden)).astype(np.float32), b1=np.zeros((m, hidden), np.float32))
    return Ensemble(mean=np.zeros(d, np.float32), scale=np.ones(d, np.float32), params=params,
                    temperature=1.3, info={"seed": 1})


def save(path, ens=None, **kw):
    return save_artifact(path, ens or make_ensemble(), encoder=ENC, features=FeatureSpec(("joint", "response")),
                         metrics={"accuracy": 0.6}, data_counts={"pairs": 10}, **kw)


@pytest.mark.parametrize("hidden", [0, 5])
def test_round_trip(tmp_path, hidden):
    ens = make_ensemble(hidden)
    save(tmp_path / "v1", ens)
    loaded, info = load_artifact(tmp_path / "v1", expected_encoder_id="bert-abc")
    x = np.random.default_rng(1).normal(size=(7, 8)).astype(np.float32)
    np.testing.assert_allclose(loaded.member_rewards(x), ens.member_rewards(x), rtol=1e-6)
    assert info.manifest["metrics"]["accuracy"] == 0.6 and info.manifest["data_counts"]["pairs"] == 10
    assert info.manifest["format_version"] == 1 and "created" in info.manifest
    assert loaded.temperature == pytest.approx(1.3)


def test_save_is_atomic(tmp_path, monkeypatch):
    import safetensors.numpy

    def crash(*a, **k):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(safetensors.numpy, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path / "v1")
    assert os.listdir(tmp_path) == []  # neither the final name nor a leftover temporary


def test_refuses_to_overwrite_unless_asked(tmp_path):
    save(tmp_path / "v1")
    with pytest.raises(ArtifactError, match="already exists"):
        save(tmp_path / "v1")
    save(tmp_path / "v1", make_ensemble(hidden=3), overwrite=True)
    assert load_artifact(tmp_path / "v1")[0].hidden == 3
    assert os.listdir(tmp_path) == ["v1"]


def corrupt_truncate(p):
    f = p / "heads.safetensors"
    f.write_bytes(f.read_bytes()[:50])


def corrupt_missing(p):
    (p / "heads.safetensors").unlink()


def corrupt_json(p):
    (p / "manifest.json").write_text('{"format": "prefloop-reward-model", ')


def corrupt_no_manifest(p):
    (p / "manifest.json").unlink()


def _edit_manifest(p, fn):
    m = json.loads((p / "manifest.json").read_text())
    fn(m)
    (p / "manifest.json").write_text(json.dumps(m))


def corrupt_shapes(p):
    _edit_manifest(p, lambda m: m["heads"].update(n_members=4))


def incompatible_version(p):
    _edit_manifest(p, lambda m: m.update(format_version=99))


@pytest.mark.parametrize("damage,message", [
    (corrupt_truncate, "truncated or corrupt"),
    (corrupt_missing, "heads.safetensors is missing"),
    (corrupt_json, "not valid JSON"),
    (corrupt_no_manifest, "manifest.json is missing"),
    (corrupt_shapes, "has shape"),
    (incompatible_version, "format version 99 is not supported"),
])
def test_corrupt_or_incompatible_artifacts_raise_clear_errors(tmp_path, damage, message):
    save(tmp_path / "v1")
    damage(tmp_path / "v1")
    with pytest.raises(ArtifactError, match=message) as exc:
        rm.load(tmp_path / "v1")
    assert str(tmp_path / "v1") in str(exc.value) and ";" in str(exc.value)  # says what to do


def test_encoder_mismatch_is_reported(tmp_path):
    save(tmp_path / "v1")
    with pytest.raises(ArtifactError, match="trained on encoder 'bert-abc'"):
        load_artifact(tmp_path / "v1", expected_encoder_id="bert-other")


def test_missing_directory(tmp_path):
    with pytest.raises(ArtifactError, match="no such directory"):
        rm.load(tmp_path / "nope")


def test_undefined_metrics_are_saved_as_null(tmp_path):
    # Metrics.to_dict() holds NaN when a figure is undefined (here: no decisive held-out
    # pair, so no accuracy, log loss or length figures); saving it must not fail.
    from rm.data import TIE, PairData
    from rm.evaluate import metrics_from_rewards

    data = PairData(np.zeros((2, 1), np.float32), [0], [1], [TIE], length=np.array([3, 3]))
    metrics = metrics_from_rewards(np.zeros((1, 2), np.float32), data).to_dict()
    assert metrics["accuracy"] != metrics["accuracy"]  # NaN
    save_artifact(tmp_path / "v1", make_ensemble(), encoder=ENC, features=FeatureSpec(("joint", "response")),
                  metrics=metrics, data_counts={"pairs": 1}, extra={"note": float("inf")})
    _, info = load_artifact(tmp_path / "v1")
    assert info.manifest["metrics"]["accuracy"] is None and info.manifest["metrics"]["n_judgments"] == 1
    assert info.manifest["extra"]["note"] is None


def test_the_tie_epsilon_each_member_trained_with_is_kept_in_the_artifact(tmp_path):
    # train_ensemble records the fitted Rao–Kupper ε per member in Ensemble.info, which the
    # manifest stores, so evaluation and reports of a saved model can show it.
    from rm.data import A_WINS, B_WINS, TIE, PairData
    from rm.train import TrainConfig, train_ensemble

    rng = np.random.default_rng(0)
    feat = rng.normal(size=(80, 8)).astype(np.float32)
    data = PairData(feat, np.arange(40), np.arange(40, 80), [A_WINS, TIE, B_WINS, A_WINS] * 10)
    ens = train_ensemble(data, TrainConfig(n_members=3, num_threads=1), seed=0)
    assert len(ens.info["tie_epsilon"]) == 3 and all(e > 0 for e in ens.info["tie_epsilon"])
    save(tmp_path / "v1", ens)
    loaded, info = load_artifact(tmp_path / "v1")
    assert loaded.info["tie_epsilon"] == ens.info["tie_epsilon"]
    assert info.manifest["heads"]["info"]["config"]["fit_tie_epsilon"] is True
