"""The package version, in one place (``einsearch.__version__``; recorded in saved models)."""

__version__ = "0.3.0"
