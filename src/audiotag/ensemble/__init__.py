"""Ensembles: blend estimators, blends of finished runs, the inference budget."""

from .blending import DEFAULT_BLENDS, blend_members, ensemble_runs
from .estimators import BLENDERS, make_blender

__all__ = ["ensemble_runs", "blend_members", "DEFAULT_BLENDS", "BLENDERS", "make_blender"]
