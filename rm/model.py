"""A loaded reward model: artifact heads + (lazily loaded) encoder + optional cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from rm.artifact import ArtifactError, ArtifactInfo, load_artifact
from rm.features import Prompt, build_features
from rm.heads import Ensemble, pair_probabilities


@dataclass
class Scores:
    """Per-response scores.

    Attributes:
        reward: ``(n,)`` ensemble-mean reward (temperature-scaled: σ(r_a - r_b) is P(a ≻ b)).
        uncertainty: ``(n,)`` standard deviation of the member rewards.
        members: ``(M, n)`` member rewards, for acquisition strategies.
    """

    reward: np.ndarray
    uncertainty: np.ndarray
    members: np.ndarray


class RewardModel:
    """Scores (prompt, response) rows with an ensemble of heads over encoder features.

    Build it with ``rm.load``. The encoder loads on the first ``score`` call; pass
    ``cache_dir`` to reuse (and grow) the on-disk embedding cache.
    """

    def __init__(self, ensemble: Ensemble, info: ArtifactInfo, *, encoder=None,
                 cache_dir: str | os.PathLike | None = None):
        self.ensemble = ensemble
        self.info = info
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._encoder = encoder
        self._embedder = None

    @property
    def features(self):
        """The artifact's ``FeatureSpec``."""
        return self.info.features

    @property
    def encoder(self):
        """The encoder the heads were trained on (loaded on first use, id checked)."""
        if self._encoder is None or isinstance(self._encoder, (str, os.PathLike)):
            from rm.encoder import Encoder, EncoderConfig, default_model_path

            desc = self.info.encoder
            cfg = desc.get("config", {})
            # Artifacts from before layer_pooling existed concatenated their layers.
            try:
                cfg = EncoderConfig(**{"layer_pooling": "concat", **cfg,
                                       "layers": tuple(cfg.get("layers", (-1,)))})
            except TypeError as exc:  # an option this version does not know
                raise ArtifactError(
                    f"reward-model artifact {self.info.path}: its encoder options {sorted(cfg)} are not "
                    f"understood by this prefloop ({exc}); upgrade prefloop or retrain the model.") from None
            path = self._encoder or desc.get("model_path")
            if path is None or not (Path(path) / "config.json").is_file():
                path = default_model_path()
            self._encoder = Encoder(path, cfg)
        if self._encoder.encoder_id != self.info.encoder_id:
            raise ArtifactError(
                f"reward-model artifact {self.info.path}: trained on encoder {self.info.encoder_id!r} "
                f"but the encoder at {self._encoder.model_path} is {self._encoder.encoder_id!r}; "
                "pass the encoder directory the model was trained on (manifest.json 'encoder') or retrain.")
        return self._encoder

    def _get_embedder(self):
        if self._embedder is None:
            if self.cache_dir is not None:
                from rm.cache import EmbeddingCache

                self._embedder = EmbeddingCache(self.cache_dir, self.encoder)
            else:
                self._embedder = self.encoder
        return self._embedder

    def featurize(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray:
        """Feature matrix ``(n, D)`` for rows of (prompt, response)."""
        return build_features(prompts, responses, self._get_embedder(), self.features)

    def score_features(self, feat: np.ndarray) -> Scores:
        """Scores from an already computed feature matrix."""
        members = self.ensemble.member_rewards(feat)
        return Scores(reward=members.mean(0), uncertainty=members.std(0), members=members)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Scores:
        """Score each (prompt, response) row once: rewards, uncertainties, member rewards (a text prompt is the
        chat of one user turn: :func:`rm.features.render_prompt`)."""
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses must have the same length")
        return self.score_features(self.featurize(prompts, responses))

    def pair_probabilities(self, scores: Scores, idx_a, idx_b) -> np.ndarray:
        """Member P(A ≻ B) ``(M, n)`` for pairs of rows of ``scores``."""
        return pair_probabilities(scores.members, idx_a, idx_b)


def load(path: str | os.PathLike, *, encoder=None, cache_dir: str | os.PathLike | None = None) -> RewardModel:
    """Load a reward-model artifact directory.

    Args:
        encoder: An ``Encoder`` or a local model directory to use instead of the
            one recorded in the artifact (its ``encoder_id`` must match).
        cache_dir: Embedding-cache root directory to read and extend.

    Raises ``rm.artifact.ArtifactError`` for missing, corrupt or incompatible artifacts.
    """
    ensemble, info = load_artifact(path)
    return RewardModel(ensemble, info, encoder=encoder, cache_dir=cache_dir)
