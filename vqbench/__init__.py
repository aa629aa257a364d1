"""vqbench: compare vector quantizers on equal terms (GM-VQ and every Table 1 baseline)."""
__version__ = "0.1.0"

from .config import resolve_config
from .errors import UserError
from .registry import build_quantizer, list_quantizers, register_quantizer
from .runner import RunResult, evaluate, fit

__all__ = ["__version__", "build_quantizer", "evaluate", "fit", "list_quantizers", "register_quantizer",
           "resolve_config", "RunResult", "UserError"]
