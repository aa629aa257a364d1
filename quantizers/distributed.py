"""Collectives the quantizers use under DistributedDataParallel, in one place.

DDP averages gradients, so whatever a quantizer learns by gradient stays identical on every
rank by itself. Everything else it changes — k-means initialisation, dead-code replacement,
usage timers, the OPT inner step, EMA updates, data-dependent calibration — must be made
identical by hand, or the ranks' codebooks drift apart silently (vector-quantize-pytorch's
issues #25, #30, #101, #105 are each one such slip). The rules these helpers serve:

- decide once, broadcast: anything random or non-deterministic (k-means, which codes get
  which replacement vector) is computed on rank 0 and broadcast;
- reduce statistics, not results: counts and sums (usage, per-code means) are all-reduced,
  then every rank applies the same deterministic update to the same numbers;
- collectives are in-place on the real buffer (never on a temporary copy, #101);
- collectives only run where every rank runs: in training-mode forwards (which DDP already
  requires in lockstep), ``after_optimizer_step`` and ``init_codebook``. Evaluation-mode
  forwards never communicate, so inference on one rank cannot hang (#198).

Every helper is the identity (and costs nothing) without an initialised process group, so
single-process code paths are unchanged. Only ``torch.distributed`` is used (part of torch).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum over ranks, in place (returns ``tensor``). Not differentiable."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max_(tensor: Tensor) -> Tensor:
    """Element-wise max over ranks, in place (e.g. "used on any rank" masks)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_reduce_sum_autograd(tensor: Tensor) -> Tensor:
    """Sum over ranks that keeps autograd: the backward sums the ranks' output gradients.

    Under DDP (gradients averaged over W ranks) a loss f(Σ_r s_r) computed on every rank
    then gets exactly the gradient of one process computing f on the global batch: rank r's
    local gradient is W · ∂f/∂s_r, and the average over ranks divides the W back out.
    """
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor, op=dist.ReduceOp.SUM)


def broadcast_(tensor: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``tensor`` in place with rank ``src``'s values (returns ``tensor``)."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


@torch.no_grad()
def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Every parameter and buffer of ``module`` set to rank ``src``'s, in place."""
    if not is_distributed():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=src)


def on_rank0_then_broadcast(compute, out: Tensor) -> Tensor:
    """Run ``compute()`` on rank 0 only, write its result into ``out`` and broadcast it.

    ``out`` must have the result's shape, dtype and device on every rank. Single process:
    returns ``compute()``. The way to make a random or non-deterministic decision once.
    """
    if not is_distributed():
        return compute()
    if dist.get_rank() == 0:
        out.copy_(compute())
    return broadcast_(out, src=0)
