"""One optimiser step, read top to bottom: ``before_update`` (what the host changes between
steps: τ's schedule), ``update`` (forward, loss, backward, clipping, AdamW: the part a CUDA
graph can hold, :mod:`.graph`) and ``after_update`` (the lr schedule, the quantizer's
post-step hook such as dead-code replacement).

The step knows the model, the optimiser, its schedule and the GPU-resident uint8 training
split it gathers batches from; it knows nothing of epochs, checkpoints or run folders.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import Tensor

from ..data import to_float_images

StepResult = tuple[Tensor, Tensor, dict[str, Tensor]]  # loss, mse, the quantizer's terms; not synced


class DivergenceError(RuntimeError):
    """The loss became non-finite; the run stops, keeps its last good checkpoint and is
    marked ``status: failed`` in its summary (``summary`` holds it once ``fit`` wrote it)."""

    def __init__(self, message: str, step: int | None = None, loss: float | None = None,
                 terms: list[str] | None = None, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.step, self.loss, self.terms, self.summary = step, loss, list(terms or []), summary


def make_autocast(device: torch.device, amp: str, cuda_graph: bool) -> Callable[[], torch.autocast]:
    """A factory of the run's autocast contexts: bf16 on CUDA by default (``train.amp=auto``),
    none on the CPU. A captured graph must not reuse autocast's cast cache."""
    amp = amp if amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    dtype = torch.bfloat16 if amp == "bf16" else None
    return functools.partial(torch.autocast, device.type, dtype=dtype or torch.float32,
                             enabled=dtype is not None, cache_enabled=not cuda_graph)


class TrainStep:
    """``step(x, number)`` → (loss, mse, terms): one optimiser step on the float batch ``x``;
    ``number`` (0-based) places it in the schedules. ``all_sum`` reduces over ranks (DDP)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 images: Tensor, total_steps: int, autocast: Callable[[], Any], *, channels_last: bool = False,
                 grad_clip: float | None = None, cudagraphs: bool = False,
                 all_sum: Callable[[Tensor], Tensor] | None = None) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.images, self.device = images, images.device  # the whole training split, uint8
        self.total_steps, self.autocast, self.channels_last = total_steps, autocast, channels_last
        self.grad_clip, self.cudagraphs = grad_clip, cudagraphs
        self.all_sum = all_sum or (lambda value: value)

    def batch(self, indices: Tensor) -> Tensor:
        """The training images at ``indices`` (a device tensor), gathered on the device, as floats."""
        return to_float_images(self.images[indices], self.channels_last)

    def __call__(self, x: Tensor, number: int) -> StepResult:
        self.before_update(number)
        result = self.update(x)
        self.after_update()
        return result

    def before_update(self, number: int) -> None:
        """Host-side state of this step: τ's schedule (a buffer write)."""
        if self.cudagraphs:  # the previous step's graph outputs may now be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        self.model.quantizer.set_progress(number / max(self.total_steps - 1, 1))

    def update(self, x: Tensor, zero_grad: bool = True) -> StepResult:
        """Forward, loss, backward, clipping, AdamW. A captured backward writes fresh ``.grad``
        on every replay, so the graph calls this with ``zero_grad=False``."""
        model = self.model
        with self.autocast():
            x_hat, out = model(x)
        x_hat = x_hat.float()
        loss = model.quantizer.reconstruction_loss(x, x_hat) + out.loss
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        self.optimizer.step()
        return loss.detach(), (x_hat.detach() - x).pow(2).mean(), out.terms

    def after_update(self) -> None:
        """The lr schedule and the quantizer's post-step hook (dead-code replacement)."""
        self.scheduler.step()
        self.model.quantizer.after_optimizer_step()

    def check_finite(self, window: list[tuple[int, Tensor, dict[str, Tensor]]]) -> None:
        """Raise DivergenceError naming the first step in ``window`` whose loss is non-finite.

        ``window`` holds references to the (step, loss, terms) of the steps since the last
        check, so finding the exact step costs one host sync per check, not one per step.
        """
        if not window:
            return
        # Summed over ranks first: a NaN on one rank stops every rank at the same step.
        finite = torch.isfinite(self.all_sum(torch.stack([loss.float() for _, loss, _ in window])))
        if not bool(finite.all()):
            step, loss, terms = window[int((~finite).nonzero()[0])]
            bad = [k for k, v in terms.items() if not bool(torch.isfinite(v).all())]
            raise DivergenceError(f"loss became {float(loss)} at step {step}"
                                  + (f" (non-finite terms: {', '.join(bad)})" if bad else " (all loss terms finite)"),
                                  step=step, loss=float(loss), terms=bad)
        window.clear()
