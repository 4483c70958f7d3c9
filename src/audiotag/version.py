"""The package version, apart from everything else so that any module can record it."""

__version__ = "0.1.0"
