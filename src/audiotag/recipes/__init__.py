"""Recipes: staged pipelines to a submission, ablations, the demo."""

from .ablation import ablate
from .demo import run_demo
from .pipeline import run_pipeline
from .recipe import bundled_recipe, load_recipe

__all__ = ["run_pipeline", "load_recipe", "bundled_recipe", "ablate", "run_demo"]
