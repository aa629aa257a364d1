"""TensorBoard logging of a run, ``train.log=tensorboard``: every epoch's record as scalars
(``train/``, ``test/``, ``quantizer/`` and ``run/`` tags, x-axis the optimiser step) and, every
``train.log_images_every`` epochs and at the last, a grid of test images above their
reconstructions, in ``RUN/tb/`` (``tensorboard --logdir runs``). ``metrics.jsonl`` stays the
record of a run; this is for watching it. The ``tensorboard`` package is an extra
(``pip install 'vqbench[tensorboard]'``), checked before anything trains; only rank 0 writes.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import UserError
from ..images import comparison_grid

TB_DIR = "tb"
GRID_IMAGES = 16  # test images in the grid, evenly spaced (two rows of 8, each above its reconstructions)


def tensorboard_log(cfg, is_main: bool) -> "TensorBoardLog":
    """The run's logger: a no-op unless ``train.log=tensorboard``; then the package must import."""
    if cfg.train.log == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as exc:
            raise UserError(f"train.log=tensorboard needs the tensorboard package ({exc}): "
                            "pip install 'vqbench[tensorboard]'") from exc
    return TensorBoardLog(cfg.train.log == "tensorboard" and is_main, cfg.train.log_images_every)


def tag(key: str) -> str:
    """An epoch record's key as a TensorBoard tag: train_loss → train/loss, q_kl → quantizer/kl."""
    for prefix, group in (("train_", "train"), ("q_", "quantizer")):
        if key.startswith(prefix):
            return f"{group}/{key[len(prefix):]}"
    return f"run/{key}" if key in ("lr", "images_per_s") else f"test/{key}"


class TensorBoardLog:
    """Opened at the first epoch it logs (no ``tb/`` folder for a run that never trains),
    closed after the last one (or when the trainer is collected)."""

    def __init__(self, enabled: bool, images_every: int) -> None:
        self.enabled, self.images_every, self.writer = enabled, int(images_every), None

    def epoch(self, trainer) -> None:
        """Log the trainer's latest epoch record (and maybe the grid); close after the last."""
        if not self.enabled:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(trainer.run_dir / TB_DIR))
        record, last = trainer.history[-1], trainer.epoch >= trainer.epochs
        for key, value in record.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag(key), value, record["step"])
        if record["epoch"] % self.images_every == 0 or last:
            self.writer.add_image("reconstructions", reconstruction_grid(trainer), record["step"])
        self.writer.flush()
        if last:
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __del__(self) -> None:
        self.close()


@torch.no_grad()
def reconstruction_grid(trainer: Any) -> torch.Tensor:
    """Test images (evenly spaced over the first evaluation batch) above their reconstructions,
    by the model as the evaluation runs it (eval mode, the run's autocast, one batch of the
    evaluation's size, so a compiled model needs no new shape)."""
    model = getattr(trainer.model, "module", trainer.model)  # not through DDP: only rank 0 is here
    was_training = model.training
    model.eval()
    x = trainer.test_images[:trainer.cfg.train.eval_batch_size].float().div(255)
    with trainer.autocast():
        x_hat, _ = model(x)
    model.train(was_training)
    pick = torch.linspace(0, len(x) - 1, min(GRID_IMAGES, len(x)), device=x.device).round().long()
    return comparison_grid(x[pick].cpu(), x_hat[pick].float().cpu())
