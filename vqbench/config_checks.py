"""The range checks of a resolved run configuration (the types are OmegaConf's: config.py)."""
from __future__ import annotations

import math

from omegaconf import DictConfig

from .errors import UserError

MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision


def check_ranges(cfg: DictConfig) -> None:
    """Every value in its range, else the first violation as a UserError (one line, exit 2)."""
    t = cfg.train
    checks = [
        (t.epochs >= 1, "train.epochs must be ≥ 1"),
        (t.max_steps is None or t.max_steps >= 1, "train.max_steps must be ≥ 1 (or null)"),
        (t.batch_size >= 1, "train.batch_size must be ≥ 1"),
        (t.eval_batch_size >= 1, "train.eval_batch_size must be ≥ 1"),
        (t.lr is None or (math.isfinite(t.lr) and t.lr > 0), "train.lr must be a finite number > 0"),
        (math.isfinite(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay must be ≥ 0"),
        (0 <= t.warmup_fraction < 1, "train.warmup_fraction must be in [0, 1)"),
        (0 < t.warmup_start_factor <= 1, "train.warmup_start_factor must be in (0, 1]"),
        (t.kmeans_samples >= 1, "train.kmeans_samples must be ≥ 1"),
        (t.grad_clip is None or t.grad_clip > 0, "train.grad_clip must be > 0 (or null)"),
        (t.amp in ("auto", "bf16", "none"), "train.amp must be auto, bf16 or none"),
        (t.matmul_precision in MATMUL_PRECISIONS, "train.matmul_precision must be highest, high or medium"),
        (t.checkpoint_every is None or t.checkpoint_every >= 1, "train.checkpoint_every must be ≥ 1"),
        (t.log in ("none", "tensorboard"), "train.log must be none or tensorboard"),
        (t.log_images_every >= 1, "train.log_images_every must be ≥ 1 (epochs)"),
        (cfg.model.latent_dim >= 1, "model.latent_dim must be ≥ 1"),
        (cfg.model.channels >= 1, "model.channels must be ≥ 1"),
        (cfg.model.res_blocks >= 0, "model.res_blocks must be ≥ 0"),
        (cfg.data.limit is None or cfg.data.limit >= 1, "data.limit must be ≥ 1 (or null)"),
        (cfg.data.test_limit is None or cfg.data.test_limit >= 1, "data.test_limit must be ≥ 1"),
        (0 < cfg.data.test_fraction < 1, "data.test_fraction must be in (0, 1)"),
        (cfg.data.validation is None or 0 < cfg.data.validation < 1 or float(cfg.data.validation).is_integer(),
         "data.validation must be a fraction in (0, 1) or a whole number of images ≥ 1 (or null)"),
        (cfg.device in ("auto", "cpu", "cuda") or str(cfg.device).startswith("cuda:"),
         "device must be auto, cpu or cuda"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
