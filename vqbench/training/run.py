"""``fit(config)``: one training run of the paper's §5.1 recipe, writing a run folder.

AdamW, linear warm-up (from factor 0.2) then cosine decay, k-means codebook initialisation
on encoder outputs, the quantizer's schedules through ``set_progress``. The train split
lives on the device as uint8 and is batched by indexing (no DataLoader). Evaluation on
the test split is noise-free (``eval()``).
"""
from __future__ import annotations

from typing import Any, Callable

from omegaconf import DictConfig

from ..config import resolve_config
from ..data import ImageData
from . import ddp
from .summary import RunResult
from .trainer import Trainer


def fit(config: DictConfig | dict | None = None, *, data: ImageData | None = None,
        log: Callable[[str], None] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None, resume: bool = False) -> RunResult:
    """Train one run; returns its summary and per-epoch history and writes its run folder.

    Re-running a configuration continues its run folder (named by the config hash) from
    the last checkpoint; a finished run is returned, not retrained. ``resume=True`` also
    insists that the run folder exists. A non-finite loss raises :class:`DivergenceError`
    after marking the run ``status: failed``.

    ``config`` may be a resolved DictConfig or a plain dict (resolved here, like the CLI).
    ``on_epoch(record)`` sees each epoch's metrics (a sweep reports them to Optuna; raising
    stops the run, e.g. for pruning).
    """
    resolved = isinstance(config, DictConfig) and "num_codes" in config.get("quantizer", {})
    cfg = config if resolved else resolve_config(base=config or {})
    try:
        return Trainer(cfg, data=data, log=log, on_epoch=on_epoch, resume=resume).fit()
    finally:
        ddp.shutdown()  # the process group, if this run created it (torchrun)
