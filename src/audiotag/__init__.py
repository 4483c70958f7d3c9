"""audiotag: multi-label audio tagging in the style of Kaggle's Freesound Audio Tagging 2019.

The Python API mirrors the command line::

    from audiotag import load_dataset, check_dataset, build_features, load_config
    ds = load_dataset("data/fat2019")
    report = check_dataset(ds)
    features = build_features(ds, load_config())

Importing the package changes nothing in the host process. :func:`use_fast_mkl` is the one
opt-in the CLI makes for itself: on AMD CPUs, MKL (torch's FFTs and float32 products) then picks
its kernels by instruction set; call it before any torch computation.
"""

from .config import Config, load_config
from .data.check import check_dataset, validate
from .data.layouts import load_dataset
from .errors import AudiotagError, AudioError, ConfigError, DataError, ValidationFailed
from .features.cache import FeatureSet, FeatureStore, build_features
from .mkl import unlock as use_fast_mkl
from .predictor import Predictor, load_predictor
from .version import __version__

__all__ = ["Config", "load_config", "check_dataset", "validate", "load_dataset", "build_features", "FeatureSet",
           "FeatureStore", "AudiotagError", "AudioError", "ConfigError", "DataError", "ValidationFailed",
           "use_fast_mkl", "load_predictor", "Predictor", "__version__"]
