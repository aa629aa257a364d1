"""A trained run as an image tokenizer: :func:`load_run` → :class:`Tokenizer`, images ⇄ codes.

    tok = vqbench.load_run("runs/gmvq-cifar10-tiny-1a2b3c4d5e6f")
    codes = tok.encode(images)     # (B, h, w) long; images uint8 (B, 3, H, W) or [0, 1] floats
    x_hat = tok.decode(codes)      # (B, 3, H, W) float32, [0, 1] scale, the decoder's output unclipped
    tok.reconstruct(images)        # == tok.decode(tok.encode(images)), exactly

``encode`` is the model's noise-free eval forward up to the code (the argmax for GM-VQ, SQ-VAE
and Gumbel, as the test metrics); ``decode`` is :meth:`Quantizer.embed` (the codes' eval
``z_q``) and the decoder; ``reconstruct`` is the two composed, so the codes carry everything a
reconstruction is made of. It equals the model's own eval forward up to the straight-through
estimator's rounding (z + sg(c − z) is c to about an ulp): within 1e-5 on [0, 1] pixels.
Everything runs in float32 without autocast, in batches of the run's ``train.eval_batch_size``.

The run folder (:mod:`vqbench.rundir`) must hold ``checkpoint.pt``, loaded with
``weights_only=True`` (a file someone put there cannot run code), and its ``config.yaml``; the
model is rebuilt from that configuration through the registry, so runs of plugin quantizers
load wherever the plugin is installed. A missing, foreign or damaged folder is one UserError line.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor

import quantizers.functional as Fq

from .config import RunConfig
from .config import config_hash as _hash
from .errors import UserError, first_line
from .images import check_images, unit_pixels
from .models import ConvAutoencoder
from .rundir import CHECKPOINT, CONFIG, read_summary
from .training.setup import build_model, check_quantizer_device, resolve_device


class Tokenizer:
    """Images ⇄ code grids with a trained autoencoder (``model``, kept in eval mode)."""

    def __init__(self, model: ConvAutoencoder, config: DictConfig, run_dir: Path | None = None,
                 summary: dict[str, Any] | None = None, batch_size: int | None = None,
                 config_hash: str | None = None) -> None:
        self.model, self.config, self.run_dir, self.summary = model.eval(), config, run_dir, summary
        self.config_hash = config_hash or _hash(config)  # as the run folder's config.yaml hashes
        self.batch_size = int(batch_size or config.train.eval_batch_size)
        if self.batch_size < 1:
            raise UserError(f"batch_size must be ≥ 1, got {batch_size}")

    def __repr__(self) -> str:
        return (f"Tokenizer({self.name}: {self.config.quantizer.name}, {self.num_codes} codes, "
                f"{self.model.downsample}x downsampling, on {self.device})")

    @property
    def name(self) -> str:
        return self.run_dir.name if self.run_dir is not None else "(no run folder)"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_codes(self) -> int:
        return self.model.quantizer.num_codes

    @property
    def codebook(self) -> Tensor:
        """The effective (C, D) codebook the decoder's inputs are drawn from."""
        with torch.no_grad():
            return self.model.quantizer.codebook.detach()

    def to(self, device: str | torch.device) -> Tokenizer:
        self.model.to(resolve_device(str(device)))
        return self

    def _batches(self, x: Tensor):
        for start in range(0, len(x), self.batch_size):
            yield x[start:start + self.batch_size].to(self.device)

    @torch.no_grad()
    def encode(self, images: Any, progress: Callable[[int], None] | None = None) -> Tensor:
        """Codes (B, h, w), long, on the tokenizer's device; ``progress(n)`` after each batch."""
        x = check_images(images)
        factor = self.model.downsample
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise UserError(f"image sides must be divisible by {factor} for this model, got {tuple(x.shape[-2:])}")
        codes = []
        with torch.autocast(self.device.type, enabled=False):
            for batch in self._batches(x):
                codes.append(self.model.quantizer(self.model.encode(unit_pixels(batch))).indices)
                if progress is not None:
                    progress(len(batch))
        return torch.cat(codes)

    @torch.no_grad()
    def decode(self, indices: Any) -> Tensor:
        """Images (B, 3, H, W), float32 on the [0, 1] scale, from codes (B, h, w) (residual
        quantizers: also per-stage codes (B, h, w, K)); uint16 arrays of a token file are fine."""
        if isinstance(indices, np.ndarray):
            indices = torch.from_numpy(indices.astype(np.int64))
        if not isinstance(indices, Tensor) or indices.dim() not in (3, 4) or len(indices) == 0:
            shape = tuple(indices.shape) if hasattr(indices, "shape") else type(indices).__name__
            raise UserError(f"codes must be a non-empty (B, h, w) grid, got {shape}")
        images = []
        with torch.autocast(self.device.type, enabled=False):
            for batch in self._batches(indices):
                try:
                    z_q = self.model.quantizer.embed(batch)
                except ValueError as exc:
                    raise UserError(f"cannot decode these codes: {first_line(exc)}") from exc
                images.append(self.model.decode(z_q))
        return torch.cat(images)

    def reconstruct(self, images: Any) -> Tensor:
        """``decode(encode(images))``: what the codes of these images stand for."""
        return self.decode(self.encode(images))

    def code_counts(self, images: Any, progress: Callable[[int], None] | None = None) -> Tensor:
        """How often each code is used on ``images``: (C,) float64."""
        return Fq.code_histogram(self.encode(images, progress), self.num_codes)


def _read_config(run_dir: Path) -> tuple[DictConfig, str]:
    """The run's configuration (typed, defaults for keys added since) and its hash as written."""
    path = run_dir / CONFIG
    try:
        raw = OmegaConf.load(path)
        named = isinstance(raw, DictConfig) and OmegaConf.select(raw, "quantizer.name") and \
            OmegaConf.select(raw, "model.name")
        cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), raw) if named else None
    except (OSError, ValueError, OmegaConfBaseException) as exc:
        raise UserError(f"{path} is not a vqbench run configuration ({first_line(exc)[:160]})") from exc
    if cfg is None:
        raise UserError(f"{path} is not a vqbench run configuration (no quantizer.name and model.name)")
    return cfg, _hash(raw)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError,
            zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise UserError(f"checkpoint {path} cannot be read ({first_line(exc)[:160]}); it is damaged or not "
                        "a vqbench checkpoint") from exc
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"checkpoint {path} is not a vqbench checkpoint (no model weights)")
    return state


def _model_weights(state: dict[str, Any]) -> dict[str, Tensor]:
    """The autoencoder's state_dict, without DDP's ``module.`` or compile's ``_orig_mod.`` prefix."""
    weights = state["model"]
    for prefix in ("module.", "_orig_mod."):
        if weights and all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix):]: v for k, v in weights.items()}
    return weights


def load_run(path: str | Path, *, device: str | torch.device = "auto", batch_size: int | None = None) -> Tokenizer:
    """The trained model of a run folder as a :class:`Tokenizer` on ``device`` (auto: CUDA when
    present); its ``config`` is the run's, ``summary`` its summary.json (None while training)."""
    run_dir = Path(path).expanduser()
    if not run_dir.exists():
        raise UserError(f"run folder {run_dir} does not exist")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a run folder (pass the folder holding {CONFIG} and {CHECKPOINT})")
    has_config, has_checkpoint = (run_dir / CONFIG).is_file(), (run_dir / CHECKPOINT).is_file()
    if not has_config and not has_checkpoint:
        raise UserError(f"{run_dir} is not a vqbench run folder (no {CONFIG}, no {CHECKPOINT})")
    if not has_checkpoint:
        raise UserError(f"{run_dir} has no {CHECKPOINT}: the run has not finished an epoch yet, or it was removed")
    if not has_config:
        raise UserError(f"{run_dir} has a {CHECKPOINT} but no {CONFIG}: not a complete run folder")
    cfg, written_hash = _read_config(run_dir)
    state = _read_checkpoint(run_dir / CHECKPOINT)
    if state.get("config_hash") not in (None, written_hash):
        raise UserError(f"checkpoint {run_dir / CHECKPOINT} belongs to another configuration (hash "
                        f"{state.get('config_hash')}, {CONFIG} says {written_hash})")
    target = resolve_device(str(device))
    try:
        model = build_model(cfg)
    except UserError as exc:
        raise UserError(f"run {run_dir.name} cannot be rebuilt here: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise UserError(f"run {run_dir.name}: quantizer {cfg.quantizer.name!r} rejects its own "
                        f"configuration ({first_line(exc)[:160]})") from exc
    check_quantizer_device(cfg, model.quantizer, target)
    try:
        model.load_state_dict(_model_weights(state))
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise UserError(f"checkpoint {run_dir / CHECKPOINT} does not fit the model of {CONFIG} "
                        f"({first_line(exc)[:160]})") from exc
    try:
        summary = read_summary(run_dir)
    except UserError:
        summary = None  # a damaged summary does not make the weights unusable
    return Tokenizer(model.to(target), cfg, run_dir, summary, batch_size, written_hash)
