"""Quantizers composed of registered quantizers: ``rvq`` and its kin.

:class:`quantizers.residual.ResidualQuantizer` takes its stage as a class, a factory or a
``module:Class`` path, because ``quantizers`` may not import this package. Registered names
(``vqvae-l2``, ``fsq``, a plugin's ``my-vq``) exist only here, in the registry, so this
subclass is what ``registry.yaml`` names for ``rvq``: it turns ``stage`` (a registered name)
into a factory that builds each stage exactly as ``build_quantizer(stage, ...)`` would — the
stage's registry defaults, then ``stage_options``, validated and typed the same way — so
``vqbench run -q rvq quantizer.stage=fsq`` or ``quantizer.stage_options.commitment=0.5`` work
like any other option, and a bad stage option is the stage's own one-line error.
"""
from __future__ import annotations

from typing import Any

from quantizers.base import Quantizer
from quantizers.residual import ResidualQuantizer

from .errors import UserError


def registered_stage(name: str):
    """A ``(num_codes=, dim=, **options) → Quantizer`` factory for a registered name."""
    from .registry import build_quantizer, get_quantizer_entry

    get_quantizer_entry(name)  # an unknown name fails here, with "did you mean"

    def make(num_codes: int, dim: int, **options: Any) -> Quantizer:
        return build_quantizer(name, num_codes=num_codes, dim=dim, **options)

    return make


class RegisteredResidualQuantizer(ResidualQuantizer):
    """Residual VQ (Zeghidour et al. 2021 SoundStream; Lee et al. 2022 RQ-VAE): K stages of any registered quantizer."""

    def __init__(self, num_codes: int = 1024, dim: int = 64, depth: int = 2, stage: str = "vqvae-l2",
                 stage_options: dict[str, Any] | None = None) -> None:
        if not isinstance(stage, str) or not stage:
            raise ValueError(f"stage must be a registered quantizer name (see `vqbench list`), got {stage!r}")
        try:
            factory = stage if ":" in stage else registered_stage(stage)
            super().__init__(num_codes, dim, depth=depth, stage=factory, stage_options=stage_options)
        except UserError as exc:  # the stage's own message, as this quantizer's one line
            raise ValueError(f"stage {stage!r}: {exc}") from exc
        self.stage_name = stage
