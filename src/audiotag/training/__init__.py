"""Training runs: the K-fold loop, batching, the noisy set's strategies, the noisy-label audit."""

from .audit import audit_run
from .train import merge, resume, train

__all__ = ["train", "resume", "merge", "audit_run"]
