"""Vector quantizers behind one contract (:class:`Quantizer`); torch and einops only."""
from .base import Quantizer, QuantizerOutput

__all__ = ["Quantizer", "QuantizerOutput"]
