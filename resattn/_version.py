"""The package version, in a module of its own so that any module (the checkpoint writer stores it) can import it
without importing the package that sits above it."""

__version__ = "0.1.0"
