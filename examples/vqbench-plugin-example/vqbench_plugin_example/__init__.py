"""An example vqbench plugin: one quantizer, registered through an entry point."""
from .factorized import FactorizedVQ

__all__ = ["FactorizedVQ"]
