"""Vector quantizers behind one contract (:class:`Quantizer`); torch and einops only."""
from .base import AnnealedQuantizer, CodebookQuantizer, Quantizer, QuantizerOutput

__all__ = ["AnnealedQuantizer", "CodebookQuantizer", "Quantizer", "QuantizerOutput"]
