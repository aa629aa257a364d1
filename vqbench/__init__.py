"""vqbench: compare vector quantizers on equal terms (GM-VQ and every Table 1 baseline)."""
from .config import resolve_config
from .errors import UserError
from .registry import build_quantizer, list_quantizers, register_quantizer
from .tokenizer import Tokenizer, load_run
from .training import RunResult, evaluate, fit
from .version import __version__

__all__ = ["__version__", "build_quantizer", "evaluate", "fit", "list_quantizers", "load_run", "register_quantizer",
           "resolve_config", "RunResult", "Tokenizer", "UserError"]
