"""DistributedDataParallel for the trainer: one process per device, launched by ``torchrun``.

``torchrun --nproc-per-node N -m vqbench run ...`` (or ``vqbench run --nproc N``, which
launches exactly that) trains one run on N processes. What this module decides:

- **Batch.** ``train.batch_size`` is the *global* batch B; each rank trains on B/N images per
  step, so a run's configuration (and its hash, and its result) does not depend on N, and
  N ranks × B/N equal one process × B up to float rounding (tested for ``vqvae``).
- **Data.** Every rank holds the whole split (it is small, uint8); rank 0's per-epoch
  permutation is broadcast and step k's global batch is ``order[kB:(k+1)B]``, of which
  rank r takes the r-th contiguous slice of B/N.
- **Writes.** Only rank 0 writes the run folder (config, metrics, checkpoints, summary);
  :meth:`DistContext.call_on_main` runs a write there and hands its result, or its
  exception, to every rank, so a failure stops all ranks together and the others know the
  checkpoint is on disk when it returns (every rank can then load the same file).
- **Lockstep.** Every collective runs on every rank: the step count is computed from the
  global configuration, the divergence check reduces the loss first, the epoch record is
  combined from all ranks, and ``on_epoch`` runs on rank 0 with its outcome broadcast.
- **Codebooks** are kept identical by the quantizers themselves (``quantizers.distributed``);
  the model's parameters and buffers are broadcast from rank 0 once, at wrapping.

Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op.
"""
from __future__ import annotations

import inspect
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from quantizers.distributed import broadcast_module_

from ..errors import UserError

# Epoch-record keys averaged over ranks (each rank saw its own slice) or summed (throughput);
# every other key (test metrics, lr, step) is rank 0's.
_MEAN_KEYS = ("train_loss", "train_mse")
_SUM_KEYS = ("images_per_s",)
_owned_group = False


class _DDP(DistributedDataParallel):
    """DDP that stands in for the model it wraps: its attributes (``quantizer``, ``encode``),
    its ``state_dict`` (checkpoints load with or without DDP), and no communication outside
    training-mode, grad-enabled forwards (evaluation on one rank cannot hang)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.training and torch.is_grad_enabled():
            return super().forward(*args, **kwargs)
        return self.module(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict:
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.load_state_dict(*args, **kwargs)


_DDP_PARAMS = inspect.signature(DistributedDataParallel.__init__).parameters


@dataclass
class DistContext:
    """This process's place in the run: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- model and data -------------------------------------------------------------
    def prepare_model(self, model: nn.Module, seed: int) -> nn.Module:
        """Rank 0's parameters and buffers everywhere, a per-rank noise stream, DDP around.

        Gradients are averaged by DDP; buffers are not broadcast per step (the quantizers keep
        theirs identical, and a per-forward broadcast would hide a slip rather than fix it).
        """
        if not self.enabled:
            return model
        broadcast_module_(model)
        # Sampling noise (Gumbel, Gaussian) must differ between ranks' batches; rank 0 keeps
        # the single-process stream.
        torch.manual_seed(seed + self.rank)
        ids = [self.device.index] if self.device.type == "cuda" else None
        # No per-forward buffer broadcast (torch ≥ 2.14 names it forward_sync_buffers).
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_PARAMS
                   else {"broadcast_buffers": False})
        return _DDP(model, device_ids=ids, static_graph=True, **no_sync)

    def local_batch_size(self, global_batch: int) -> int:
        """Each rank's share of ``train.batch_size``; it must divide evenly."""
        if global_batch % self.world_size:
            raise UserError(f"train.batch_size {global_batch} is the global batch and must be divisible by "
                            f"the number of processes ({self.world_size}); use a multiple of {self.world_size}")
        return global_batch // self.world_size

    def shard_order(self, order: Tensor, local_batch: int) -> Tensor:
        """This rank's rows of an epoch permutation: the r-th slice of every global batch."""
        if not self.enabled:
            return order
        dist.broadcast(order, src=0)  # one permutation, even if the ranks' generators drifted
        global_batch = local_batch * self.world_size
        steps = len(order) // global_batch
        return order[:steps * global_batch].view(steps, self.world_size, local_batch)[:, self.rank].reshape(-1)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (``[obj]`` alone)."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    # --- lockstep -------------------------------------------------------------------
    def call_on_main(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args)`` on rank 0; every rank returns its result or raises its exception."""
        if not self.enabled:
            return fn(*args, **kwargs)
        box: list[Any] = [None]
        error: BaseException | None = None
        if self.is_main:
            try:
                box[0] = ("ok", fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to every rank, then re-raised
                error = exc
                box[0] = ("err", exc if _picklable(exc) else RuntimeError(f"{type(exc).__name__}: {exc}"))
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if error is not None:
            raise error
        if kind == "err":
            raise value
        return value

    def main_first(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn`` on rank 0 first (e.g. a dataset download), then on the others."""
        if not self.enabled:
            return fn(*args, **kwargs)
        result = self.call_on_main(fn, *args, **kwargs)
        return result if self.is_main else fn(*args, **kwargs)

    def all_sum(self, value: Tensor) -> Tensor:
        """Sum over ranks (NaN anywhere gives NaN everywhere), as a new tensor."""
        if not self.enabled:
            return value
        out = value.detach().clone()
        dist.all_reduce(out)
        return out

    def sync_record(self, record: dict[str, Any]) -> dict[str, Any]:
        """One epoch record for every rank: train losses averaged, throughput summed."""
        if not self.enabled:
            return record
        records = self.gather_objects(record)
        merged = dict(records[0])
        for key, value in merged.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if key in _SUM_KEYS:
                merged[key] = sum(r[key] for r in records)
            elif key in _MEAN_KEYS or key.startswith("q_"):
                merged[key] = sum(r[key] for r in records) / self.world_size
        return merged


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
        return True
    except Exception:  # noqa: BLE001
        return False


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def setup(device: torch.device) -> DistContext:
    """The process group from torchrun's environment (or one already initialised).

    Backend NCCL on CUDA (device ``cuda:LOCAL_RANK``), gloo on CPU. Collectives time out
    after ``VQBENCH_DIST_TIMEOUT_S`` seconds (default 1800) instead of hanging forever.
    """
    global _owned_group
    if not dist.is_available() or (not dist.is_initialized() and env_world_size() <= 1):
        return DistContext(device=device)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise UserError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible); "
                            "start at most one process per GPU")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("VQBENCH_DIST_TIMEOUT_S", "1800")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        _owned_group = True
    ctx = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)
    if not ctx.is_main:
        os.environ["VQBENCH_NO_PROGRESS"] = "1"  # one progress bar, rank 0's
    return ctx


def shutdown() -> None:
    """Destroy the process group if :func:`setup` created it."""
    global _owned_group
    if _owned_group and dist.is_initialized():
        dist.destroy_process_group()
    _owned_group = False


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m vqbench ARGV`` on ``nproc`` local processes through torchrun."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "vqbench", *argv]
    try:
        return subprocess.run(cmd, check=False).returncode
    except KeyboardInterrupt:
        return 130
