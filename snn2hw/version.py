"""The package version, at the bottom of the import order so that anything may record it."""

__version__ = "0.1.0"
