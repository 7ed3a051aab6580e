"""prefloop reward-model library: plain data in, embeddings, models, scores out.

Imports neither ``annotate`` nor streamlit and knows nothing of the database.
``import rm`` is light (numpy only); torch/transformers load when a submodule
needs them. The API below is stable; ``rm.acquisition`` builds on it.

Data (``rm.data``)
    ``A_WINS, B_WINS, TIE, BOTH_BAD = 0, 1, 2, 3``; ``outcome_code("a"|"b"|"tie"|"both_bad") -> int``
    ``PairData(feat, ia, ib, outcome, strength=None, group=None, length=None)``
        ``feat (R, D)`` response features shared by reference; ``ia, ib (n,)`` row
        indices; ``strength (n,)`` 0-3; ``group (n,)`` prompt keys; ``length (R,)``.
        ``.subset(rows)``, ``.swapped()``, ``PairData.from_arrays(x_a, x_b, outcome, ...)``.

Encoder and cache (``rm.encoder``, ``rm.cache``)
    ``Encoder(model_path=None, config=EncoderConfig(), *, num_threads=2, batch_size=32, device=None)``
        ``.encoder_id``, ``.dim``, ``.describe() -> dict``,
        ``.encode(texts, keep="start"|"end") -> (n, dim) float32``,
        ``.encode_pairs(prompts, responses) -> (n, dim)`` (``prompt-tail [SEP] response``).
    ``EncoderConfig(max_length=256, layers=(-1, -2, -3, -4), layer_pooling="mean", normalize=True, prompt_share=0.25)``
    ``EmbeddingCache(directory, encoder)``: ``.embed(texts, keep=)``, ``.embed_pairs(prompts, responses)``
        compute only unseen inputs, once each, persisted under ``directory/encoder_id/``.

Features (``rm.features``)
    ``render_prompt(prompt: str | list[dict]) -> str``
    ``FeatureSpec(parts=("joint", "response"))``; ``.dim(encoder_dim)``
    ``build_features(prompts, responses, cache_or_encoder, spec=None) -> (n, D) float32``

Heads, training, evaluation (``rm.heads``, ``rm.train``, ``rm.evaluate``, ``rm.split``)
    ``Ensemble``: ``.member_rewards(feat) -> (M, R) float32`` (temperature applied),
        ``.rewards(feat) -> (R,)``, ``.n_members``, ``.dim``, ``.temperature``.
    ``pair_probabilities(member_rewards (M, R), idx_a, idx_b) -> (M, n) float32`` P(A ≻ B).
    ``TrainConfig(...)``: every option documented on the dataclass.
    ``train_ensemble(data: PairData, config=None, seed=0) -> Ensemble``
    ``fit_and_evaluate(train: PairData, test: PairData | None, config=None, seed=0) -> (Ensemble, Metrics | None)``
    ``preference_loss(d, outcome, margin=0.0, tie_epsilon=0.0) -> per-pair NLL`` (torch)
    ``evaluate(ensemble, data) -> Metrics``; ``metrics_from_rewards(member_rewards, data) -> Metrics``
        ``Metrics.to_dict()`` / ``.summary()``: accuracy, log_loss, ece, length baselines,
        reward_length_spearman, ensemble spreads, calibration bins.
    ``held_out_mask(groups, test_fraction=0.3, salt="") -> bool array``; ``split_by_group(...)``.

Artifacts and scoring (``rm.artifact``, ``rm.model``)
    ``save_artifact(path, ensemble, *, encoder: dict, features: FeatureSpec, metrics=None,
        data_counts=None, extra=None, overwrite=False) -> Path`` (atomic)
    ``load_artifact(path, *, expected_encoder_id=None) -> (Ensemble, ArtifactInfo)``
    ``ArtifactError``: missing / corrupt / incompatible artifact; the message says what to do.
    ``load(path, *, encoder=None, cache_dir=None) -> RewardModel``
    ``RewardModel.score(prompts, responses) -> Scores(reward (n,), uncertainty (n,), members (M, n))``;
        ``.featurize(prompts, responses)``, ``.score_features(feat)``, ``.pair_probabilities(scores, ia, ib)``.

Full fine-tune (``rm.finetune``, optional, CUDA when available)
    ``finetune(model_path, prompts, chosen, rejected, output_dir, config=FinetuneConfig(), *, strength=None)
        -> (model, tokenizer)``; saves an ``AutoModelForSequenceClassification`` (num_labels=1) + tokenizer.
    ``load_finetuned(path) -> (model, tokenizer)``; ``score_pairs_model(model, tokenizer, prompts, responses)``.
"""

from rm.data import A_WINS, B_WINS, BOTH_BAD, TIE, PairData

# The names below live in modules that import torch; they load on first use (PEP 562), so that
# ``import rm`` and the numpy-only submodules (``rm.acquisition``, ``rm.data``, ``rm.split``)
# stay light: every ``prefloop`` command checks strategy names through ``rm.acquisition``.
_LAZY = {
    "ArtifactError": "rm.artifact",
    "Ensemble": "rm.heads",
    "pair_probabilities": "rm.heads",
    "RewardModel": "rm.model",
    "Scores": "rm.model",
    "load": "rm.model",
}

__all__ = ["A_WINS", "B_WINS", "BOTH_BAD", "TIE", "ArtifactError", "Ensemble", "PairData", "RewardModel",
           "Scores", "load", "pair_probabilities"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rm' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
