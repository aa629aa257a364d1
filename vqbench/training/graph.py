"""The whole training step as one CUDA graph (``train.cuda_graph=true``).

On a GPU a small autoencoder's step is launch-bound: hundreds of kernels of a few µs each,
plus the optimiser's. ``torch.compile(mode="reduce-overhead")`` graphs the model's forward
and backward but leaves the batch gather, the loss, ``zero_grad`` and AdamW eager. Here
one graph replays everything between two batches: gather from the GPU-resident uint8
split, uint8 → float, forward, loss, backward, gradient clipping and fused AdamW
(``capturable=True``, the learning rates as device tensors).

The graph holds the :class:`TrainStep`'s ``update``; its ``before_update`` and ``after_update``
stay outside, launched eagerly around each replay because they change from step to step
on the host: the quantizer's ``set_progress`` (τ is a buffer the graph reads),
the learning-rate schedule (it fills the groups' lr tensors in place), the quantizer's
``after_optimizer_step`` (dead-code replacement may branch on the host) and copying this
step's indices into the graph's static index buffer. Random draws inside the graph (Gumbel
and Gaussian noise) advance the CUDA generator on every replay, as PyTorch's graph-safe RNG
does, so each step gets fresh noise.

Recipe (PyTorch's "whole network capture"): a few eager steps on a side stream (they are
real training steps; they also compile the model and let GM-VQ calibrate its precision
scale), gradients set to None so the captured backward allocates them in the graph's pool,
capture, then replay. The loss, the MSE and the scalar quantizer terms are stacked inside
the graph into one vector, cloned after each replay with a single copy.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from quantizers.base import Quantizer

from ..errors import UserError
from .optim import lrs_as_tensors
from .setup import CUDAGRAPH_COMPILE_MODES
from .step import StepResult, TrainStep

EAGER_STEPS = 3  # side-stream warm-up before capture (PyTorch's recipe)


def check_cuda_graph(cfg, device: torch.device, distributed: bool, quantizer: Quantizer) -> None:
    """One clear line for the settings a whole-step graph cannot honour."""
    if not cfg.train.cuda_graph:
        return
    if device.type != "cuda":
        raise UserError(f"train.cuda_graph=true needs a CUDA device, but this run is on {device.type}; "
                        "drop it or use device=cuda")
    if cfg.train.compile in CUDAGRAPH_COMPILE_MODES:
        raise UserError(f"train.cuda_graph=true already graphs the whole step; train.compile={cfg.train.compile} "
                        "would nest CUDA graphs: use train.compile=default, max-autotune-no-cudagraphs or none")
    if distributed:
        raise UserError("train.cuda_graph=true is for one process; under torchrun drop it")
    if not quantizer.cuda_graph_safe:
        raise UserError(f"quantizer {cfg.quantizer.name!r} cannot be replayed from a CUDA graph (it keeps Python "
                        "state between steps or syncs with the host; see Quantizer.cuda_graph_safe): "
                        "drop train.cuda_graph=true")


class CudaGraphBackend:
    """Side-stream warm-up, capture and replay with ``torch.cuda`` (tests swap in an eager one)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        self.graph: torch.cuda.CUDAGraph | None = None

    def warm_up(self, body: Callable[[], Tensor]) -> Tensor:
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out = body()
        current.wait_stream(self.stream)
        return out

    def capture(self, body: Callable[[], Tensor]) -> Tensor:
        """Record ``body`` (nothing runs); returns its static output."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # synchronizes, captures on its own side stream
            out = body()
        self.graph = graph
        return out

    def replay(self) -> None:
        self.graph.replay()


class GraphedStep:
    """``graphed(indices, number)`` → (loss, mse, terms): the :class:`TrainStep` ``step`` on the
    training images at ``indices``, its ``update`` replayed from a CUDA graph."""

    def __init__(self, step: TrainStep, backend: CudaGraphBackend | None = None) -> None:
        self.step = step
        self.backend = backend or CudaGraphBackend(step.device)
        self.captured = False
        self.eager_left = EAGER_STEPS
        self.indices: Tensor | None = None
        self.stats: Tensor | None = None
        self.term_names: list[str] = []
        self.lrs: list[Tensor] = []

    def _body(self, indices: Tensor) -> Tensor:
        """Gather, update, and the step's scalars stacked into one fp32 vector."""
        loss, mse, terms = self.step.update(self.step.batch(indices), zero_grad=False)
        scalars = {k: v for k, v in terms.items() if v.numel() == 1}
        self.term_names = list(scalars)
        return torch.stack([loss.float(), mse.float(), *(v.float().reshape(()) for v in scalars.values())])

    def __call__(self, indices: Tensor, number: int) -> StepResult:
        t = self.step
        t.before_update(number)
        if self.captured:
            self.indices.copy_(indices)
            self.backend.replay()
            stats = self.stats.clone()
        elif self.eager_left > 0:  # a real step, on a side stream as the recipe asks
            self.eager_left -= 1
            t.optimizer.zero_grad(set_to_none=True)
            stats = self.backend.warm_up(lambda: self._body(indices))
        else:
            stats = self._capture_and_run(indices)
        t.after_update()
        if self.captured:
            self._keep_lr_tensors()
        return stats[0], stats[1], {k: stats[2 + i] for i, k in enumerate(self.term_names)}

    def _keep_lr_tensors(self) -> None:
        """The captured AdamW reads the lr tensors it saw at capture. torch's schedulers fill
        tensor lrs in place; one that assigns a new value instead is copied into them."""
        for group, lr in zip(self.step.optimizer.param_groups, self.lrs):
            if group["lr"] is not lr:
                lr.fill_(group["lr"])
                group["lr"] = lr

    def _capture_and_run(self, indices: Tensor) -> Tensor:
        optimizer = self.step.optimizer
        if not all(isinstance(group["lr"], Tensor) for group in optimizer.param_groups):
            lrs_as_tensors(optimizer, self.step.device)
        self.lrs = [group["lr"] for group in optimizer.param_groups]
        self.indices = indices.clone()
        optimizer.zero_grad(set_to_none=True)  # the captured backward then writes fresh .grad each replay
        self.stats = self.backend.capture(lambda: self._body(self.indices))
        self.captured = True
        self.backend.replay()  # capture only records: this runs the step
        return self.stats.clone()
