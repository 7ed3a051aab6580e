"""prefloop reward-model library (placeholder docstring, completed below)."""

from rm.artifact import ArtifactError
from rm.data import A_WINS, B_WINS, BOTH_BAD, TIE, PairData
from rm.heads import Ensemble, pair_probabilities
from rm.model import RewardModel, Scores, load

__all__ = ["A_WINS", "B_WINS", "BOTH_BAD", "TIE", "ArtifactError", "Ensemble", "PairData", "RewardModel",
           "Scores", "load", "pair_probabilities"]
