"""The package version, in a module of its own so that any module may read it without
importing ``vqbench/__init__.py`` (which imports most of the package)."""
__version__ = "0.1.0"
