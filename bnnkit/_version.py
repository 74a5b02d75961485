"""The package version, in a module of its own so that modules needing it import no package
__init__ (which re-exports the Python API)."""

__version__ = "0.1.0"
