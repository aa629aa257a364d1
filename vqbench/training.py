"""The pieces of a training run, each usable alone: device and seeds, the model, the
optimiser and its schedule (AdamW, linear warm-up from 0.2 then cosine decay, Huh et al.
2023), batches from uint8 images, latents for k-means, and the noise-free evaluation."""
from __future__ import annotations

import math
import os
import random
import sys
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

import quantizers.functional as Fq
from quantizers.base import Quantizer

from .data import ImageData
from .errors import UserError
from .models import ConvAutoencoder
from .registry import build_quantizer, registry_document


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


def lr_factor(step: int, total: int, warmup_fraction: float, start_factor: float) -> float:
    """Linear warm-up from ``start_factor`` to 1, then cosine decay to 0 (Huh et al. 2023)."""
    warmup = int(round(total * warmup_fraction))
    if step < warmup:
        return start_factor + (1.0 - start_factor) * step / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def quantizer_param_groups(quantizer: Quantizer, lr: float, weight_decay: float) -> list[dict]:
    """The quantizer's ``param_groups()`` as optimiser groups: lr × ``lr_scale``, the group's
    own weight decay or ``weight_decay``; empty groups dropped."""
    groups = []
    for group in quantizer.param_groups():
        group = dict(group)
        group["lr"] = lr * group.pop("lr_scale", 1.0)
        group.setdefault("weight_decay", weight_decay)
        group["params"] = list(group["params"])
        if group["params"]:
            groups.append(group)
    return groups


def make_optimizer(model: ConvAutoencoder, cfg: DictConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the autoencoder and the quantizer's groups (``lr_scale``, own decay)."""
    lr, wd = cfg.train.lr, cfg.train.weight_decay
    q_params = {id(p) for p in model.quantizer.parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in q_params and p.requires_grad],
               "lr": lr, "weight_decay": wd}, *quantizer_param_groups(model.quantizer, lr, wd)]
    for group in groups:
        group["initial_lr"] = group["lr"]
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=wd, fused=fused)
    if cfg.train.cuda_graph:
        lrs_as_tensors(optimizer, device)  # and capturable
    return optimizer


def lrs_as_tensors(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Each group's lr as a device tensor that the scheduler fills in place, so a captured
    (CUDA-graph) AdamW step reads the current lr instead of the one at capture."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        group["capturable"] = device.type == "cuda"  # CPU AdamW has no capturable mode


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


def to_float_images(batch_u8: Tensor, channels_last: bool) -> Tensor:
    x = batch_u8.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def kmeans_image_count(model: ConvAutoencoder, shape: torch.Size, count: int) -> tuple[int, int]:
    """(images drawn, latent vectors per image) for ``count`` k-means samples."""
    per_image = (shape[-1] // model.downsample) * (shape[-2] // model.downsample)
    return min(shape[0], max(1, math.ceil(count / per_image))), per_image


@torch.no_grad()
def collect_latents(model: ConvAutoencoder, images: Tensor, count: int, generator: torch.Generator,
                    batch_size: int, channels_last: bool) -> Tensor:
    """About ``count`` encoder output vectors from random training images, (N, D)."""
    n_images, _ = kmeans_image_count(model, images.shape, count)
    order = torch.randperm(len(images), generator=generator)[:n_images].to(images.device)
    chunks = []
    for start in range(0, n_images, batch_size):
        z = model.encode(to_float_images(images[order[start:start + batch_size]], channels_last)).float()
        chunks.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
    return torch.cat(chunks)


@torch.no_grad()
def evaluate(model: ConvAutoencoder, images: Tensor, batch_size: int, channels_last: bool = False,
             autocast: Callable[[], Any] | None = None) -> dict[str, float]:
    """Noise-free test metrics: mse, perplexity (per batch, averaged), code_perplexity, codes_used."""
    was_training = model.training
    model.eval()
    num_codes = model.quantizer.num_codes
    sse = torch.zeros((), dtype=torch.float64, device=images.device)
    ppl_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    counts = torch.zeros(num_codes, dtype=torch.float64, device=images.device)
    batches = 0
    for start in range(0, len(images), batch_size):
        x = to_float_images(images[start:start + batch_size], channels_last)
        with autocast() if autocast else torch.autocast(x.device.type, enabled=False):
            x_hat, out = model(x)
        # Per-image sums, then a short float64 sum: a fixed reduction order, so the same
        # seed gives bit-identical metrics (one big multi-threaded sum does not).
        sse += (x_hat.float() - x).pow(2).flatten(1).sum(1).double().sum()
        batch_counts = Fq.code_histogram(out.indices, num_codes)
        counts += batch_counts
        # The paper's perplexity uses q(c|x) where the method has one; else the hard codes.
        q = Fq.aggregated_posterior(out.probs.double()) if out.probs is not None else batch_counts / batch_counts.sum()
        ppl_sum += Fq.perplexity(q)
        batches += 1
    model.train(was_training)
    return {
        "mse": float(sse) / images.numel(),
        "perplexity": float(ppl_sum) / batches,
        "code_perplexity": float(Fq.histogram_perplexity(counts)),
        "codes_used": int((counts > 0).sum()),
    }


def mean_image_mse(train: Tensor, test: Tensor) -> float:
    """MSE of predicting every test image by the mean training image: the floor to beat."""
    mean = train.float().div(255).mean(0)
    return float((test.float().div(255) - mean).pow(2).mean())


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    quiet = os.environ.get("VQBENCH_NO_PROGRESS") == "1" or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="step", disable=quiet, dynamic_ncols=True, leave=False)


def _check_shapes(cfg: DictConfig, data: ImageData) -> None:
    _, h, w = data.image_shape
    factor = 2 ** model_class(cfg.model.name).stages  # the model's total downsampling
    expected = cfg.data.image_size
    if (h, w) != (expected, expected) and cfg.data.name != "npz":
        raise UserError(f"dataset {cfg.data.name} gave {h}x{w} images but {expected}x{expected} were expected")
    if h % factor or w % factor:
        raise UserError(f"model {cfg.model.name} needs image sides divisible by {factor}, got {h}x{w}")
