"""The optimiser and its schedule (paper §5.1): AdamW over the autoencoder and the
quantizer's own parameter groups, linear warm-up from factor 0.2 then cosine decay
(Huh et al. 2023), and the learning rates as device tensors for a captured step."""
from __future__ import annotations

import math

import torch
from omegaconf import DictConfig

from quantizers.base import Quantizer

from ..models import ConvAutoencoder


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


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                   train: DictConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`lr_factor` over ``total_steps``, stepped once per optimiser step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, train.warmup_fraction, train.warmup_start_factor))


def lrs_as_tensors(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Each group's lr as a device tensor that the scheduler fills in place, so a captured
    (CUDA-graph) AdamW step reads the current lr instead of the one at capture."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        group["capturable"] = device.type == "cuda"  # CPU AdamW has no capturable mode
