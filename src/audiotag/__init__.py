"""audiotag: multi-label audio tagging in the style of Kaggle's Freesound Audio Tagging 2019.

The Python API mirrors the command line::

    from audiotag import load_dataset, check_dataset, build_features, load_config
    ds = load_dataset("data/fat2019")
    report = check_dataset(ds)
    features = build_features(ds, load_config())
"""

__version__ = "0.1.0"

from . import mkl  # noqa: E402

mkl.unlock()  # before any MKL call: see mkl.py

from .config import Config, load_config  # noqa: E402
from .data.check import check_dataset, validate  # noqa: E402
from .data.layouts import load_dataset  # noqa: E402
from .errors import AudiotagError, AudioError, ConfigError, DataError, ValidationFailed  # noqa: E402
from .features.cache import FeatureSet, FeatureStore, build_features  # noqa: E402

__all__ = ["Config", "load_config", "check_dataset", "validate", "load_dataset", "build_features", "FeatureSet",
           "FeatureStore", "AudiotagError", "AudioError", "ConfigError", "DataError", "ValidationFailed"]
