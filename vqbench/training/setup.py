"""What a run is built from, each piece usable alone and checked before anything trains:
the device and seeds, the autoencoder around the registry's quantizer, the step counts,
``torch.compile``, and the progress bar."""
from __future__ import annotations

import math
import os
import random
import sys

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..data import ImageData
from ..errors import UserError
from ..models import ConvAutoencoder
from ..registry import build_quantizer, registry_document
from .ddp import DistContext


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_class(name: str) -> type[ConvAutoencoder]:
    """The autoencoder class registry.yaml names for ``name``."""
    module_name, _, cls_name = registry_document()["models"][name]["class"].partition(":")
    return getattr(__import__(module_name, fromlist=[cls_name]), cls_name)


def build_model(cfg: DictConfig) -> ConvAutoencoder:
    qkwargs = {k: v for k, v in OmegaConf.to_container(cfg.quantizer).items() if k != "name"}
    quantizer = build_quantizer(cfg.quantizer.name, **qkwargs)
    return model_class(cfg.model.name)(quantizer, latent_dim=cfg.model.latent_dim, channels=cfg.model.channels,
               res_blocks=cfg.model.res_blocks)


def check_shapes(cfg: DictConfig, data: ImageData) -> None:
    """The images are the size the config says and the model can downsample them."""
    _, h, w = data.image_shape
    factor = 2 ** model_class(cfg.model.name).stages  # the model's total downsampling
    expected = cfg.data.image_size
    if (h, w) != (expected, expected) and cfg.data.name != "npz":
        raise UserError(f"dataset {cfg.data.name} gave {h}x{w} images but {expected}x{expected} were expected")
    if h % factor or w % factor:
        raise UserError(f"model {cfg.model.name} needs image sides divisible by {factor}, got {h}x{w}")


def step_plan(train: DictConfig, n_images: int, dist: DistContext) -> tuple[int, int, int, int]:
    """(this rank's batch, steps per epoch, total steps, epochs). ``train.batch_size`` is the
    global batch (at most the split); ``train.max_steps`` cuts ``train.epochs`` short."""
    batch_size = min(train.batch_size, n_images)
    steps_per_epoch = n_images // batch_size
    total_steps = train.epochs * steps_per_epoch
    if train.max_steps:
        total_steps = min(total_steps, train.max_steps)
    return dist.local_batch_size(batch_size), steps_per_epoch, total_steps, math.ceil(total_steps / steps_per_epoch)


def check_quantizer_device(cfg: DictConfig, quantizer, device: torch.device) -> None:
    """The quantizer's own settings for this device (``Quantizer.check_device``), as one line."""
    try:
        quantizer.check_device(device)
    except ValueError as exc:
        raise UserError(f"quantizer {cfg.quantizer.name!r}: {exc}") from exc


COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDAGRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")  # inductor wraps these in its own CUDA graphs


def inductor_workarounds() -> None:
    """Inductor settings the GM-VQ graphs need. torch 2.11 + Triton 3.6 on an H100: the
    "mix-order reduction" fusion put GM-VQ's row-wise argmax and its column sums (q^B, the
    entropy) into one kernel whose generated code referenced an undefined variable
    (NameError at Triton compile, every GM-VQ graph); without that fusion it compiles."""
    import torch._inductor.config as inductor

    if hasattr(inductor.triton, "mix_order_reduction"):
        inductor.triton.mix_order_reduction = False


def compile_model(model: torch.nn.Module, mode: str) -> bool:
    """``torch.compile`` the model in place (state_dict keys unchanged); True if CUDA graphs."""
    if mode not in COMPILE_MODES:
        raise UserError(f"train.compile={mode!r} is not a mode; use one of {', '.join(COMPILE_MODES)}")
    if mode != "none":
        inductor_workarounds()
        model.compile(mode=None if mode == "default" else mode, dynamic=False)
    return mode in CUDAGRAPH_COMPILE_MODES


def progress_bar(total: int, desc: str, unit: str = "step"):
    """The run's step counter on stderr; off when stderr is not a terminal or VQBENCH_NO_PROGRESS=1."""
    from tqdm.auto import tqdm

    quiet = os.environ.get("VQBENCH_NO_PROGRESS") == "1" or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, dynamic_ncols=True, leave=False)

