"""Images in and out of the library, in vqbench's convention (:mod:`vqbench.data`): batches
(N, 3, H, W), uint8 pixels or floats on the [0, 1] scale; uint8 again for saving; and the
comparison grid of originals above their reconstructions (``vqbench reconstruct``, TensorBoard).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import UserError

# Float images are taken as [0, 1] pixels; a batch beyond these bounds is on another scale.
FLOAT_RANGE = (-0.5, 1.5)


def check_images(images: Any) -> Tensor:
    """uint8 (N, 3, H, W) or [0, 1] floats (a tensor or an array) as a tensor, unconverted
    (a whole split stays uint8); anything else is a one-line UserError saying what was expected."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, Tensor):
        raise UserError(f"images must be a tensor or an array (N, 3, H, W), got {type(images).__name__}")
    shape = tuple(images.shape)
    if images.dim() != 4 or shape[1] != 3:
        hint = ("; it looks like (N, H, W, 3): use images.permute(0, 3, 1, 2)" if images.dim() == 4 and shape[-1] == 3
                else "; a single image needs a batch axis: images[None]" if images.dim() == 3 else "")
        raise UserError(f"images must be (N, 3, H, W), got shape {shape}{hint}")
    if shape[0] == 0:
        raise UserError("no images: the batch is empty")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise UserError(f"images must be uint8 (0-255) or floats in [0, 1], got {images.dtype}")
    low, high = float(images.min()), float(images.max())
    if not (FLOAT_RANGE[0] <= low and high <= FLOAT_RANGE[1]):
        raise UserError(f"float images must be on the [0, 1] scale, got values in [{low:.3g}, {high:.3g}] "
                        "(divide 0-255 pixels by 255; map [-1, 1] ones by (x + 1) / 2)")
    return images


def unit_pixels(images: Tensor) -> Tensor:
    """Checked images (:func:`check_images`) as float32 [0, 1] pixels."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def to_uint8(images: Tensor) -> Tensor:
    """[0, 1] float images as uint8, clipped and rounded (for saving or viewing)."""
    return images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)


def comparison_grid(originals: Tensor, reconstructions: Tensor, columns: int = 8, padding: int = 2) -> Tensor:
    """One (3, H', W') float image: rows of ``columns`` originals, each row followed by their
    reconstructions, so every reconstruction sits right below its original (white padding)."""
    from torchvision.utils import make_grid

    n = len(originals)
    columns = max(1, min(columns, n))
    rows = []
    for start in range(0, n, columns):
        for batch in (originals, reconstructions):
            chunk = batch[start:start + columns].detach().float().clamp(0, 1).cpu()
            blank = torch.ones(columns - len(chunk), *chunk.shape[1:])
            rows.append(torch.cat([chunk, blank]))
    return make_grid(torch.cat(rows), nrow=columns, padding=padding, pad_value=1.0)
