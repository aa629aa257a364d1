"""A scale set once from the data: the mechanism GM-VQ's precision scale and SQ-VAE's initial
variance share (see each one's module docstring for what is set and why)."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import Quantizer


class CalibratedQuantizer(Quantizer):
    """A scale set once from the encoder's outputs (GM-VQ's precision scale, SQ-VAE's initial
    variance): at k-means init, else on the first training batch. The subclass says how in
    :meth:`calibrate_from`; the ``calibrated`` buffer carries "done" in checkpoints, and a
    cached flag spares the host sync per step once it is. Combine as
    ``class M(AnnealedQuantizer, CalibratedQuantizer, CodebookQuantizer)``."""

    def init_calibration(self, from_data: bool) -> None:
        self._from_data = from_data
        self.register_buffer("calibrated", torch.tensor(not from_data))
        self._calibrated_seen = not from_data

    def calibrate_from(self, z: Tensor) -> None:
        """Set the scale from encoder outputs ``z`` (N, D)."""
        raise NotImplementedError

    @torch.no_grad()
    def calibrate(self, z: Tensor) -> None:
        self.calibrate_from(z)
        self.calibrated.fill_(True)
        self._calibrated_seen = True

    def calibrate_if_unset(self, z: Tensor) -> None:
        """In training, set the scale from ``z`` unless it is set (one host sync per step until then)."""
        if self.training and not self._calibrated_seen:
            self._calibrated_seen = bool(self.calibrated)
            if not self._calibrated_seen:
                self.calibrate(z.detach())

    def init_codebook(self, samples: Tensor, generator: torch.Generator | None = None) -> None:
        super().init_codebook(samples, generator)
        if self._from_data:
            self.calibrate(samples)
