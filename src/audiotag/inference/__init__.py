"""Using trained runs: windows and TTA, fold averaging, submissions, scoring, tagging files."""

from .score import score_submission
from .submission import predict_run
from .tag import tag_files

__all__ = ["predict_run", "score_submission", "tag_files"]
