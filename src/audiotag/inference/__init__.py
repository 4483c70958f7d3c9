"""Predicting with trained runs: windows and TTA, fold averaging, a run as a scorer, scoring submissions."""

from .scorer import Decoded, RunScorer
from .score import score_submission

__all__ = ["Decoded", "RunScorer", "score_submission"]
