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

from __future__ import annotations

import importlib

# name -> module it comes from; imported on first use, so that ``import audiotag`` (and the
# command's launcher) loads neither torch nor scikit-learn until something needs them
_EXPORTS = {
    "Config": "config", "load_config": "config",
    "check_dataset": "data.check", "validate": "data.check",
    "load_dataset": "data.layouts",
    "AudiotagError": "errors", "AudioError": "errors", "ConfigError": "errors", "DataError": "errors",
    "ValidationFailed": "errors",
    "FeatureSet": "features.cache", "FeatureStore": "features.cache", "build_features": "features.cache",
    "use_fast_mkl": "mkl",
    "Predictor": "predictor", "load_predictor": "predictor",
    "__version__": "version",
}
_RENAMED = {"use_fast_mkl": "unlock"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:  # a submodule, as the eager package offered them: audiotag.config
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
