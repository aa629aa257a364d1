"""A run's checkpoint: all a resumed run needs to continue bit for bit.

Weights and quantizer buffers (codebook, usage counters, τ), optimiser, scheduler, every
RNG, the data-order position inside the epoch, counters and history; tensors and plain
containers only, so the file loads under ``weights_only``. Under DDP each rank draws its
own noise and sums its own losses: every rank's RNGs and epoch position go into rank 0's
file (``per_rank``), and each rank restores its own.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ..config import config_hash
from ..errors import UserError, first_line
from ..rundir import CHECKPOINT, PREVIOUS_CHECKPOINT, write_atomic
from .ddp import DistContext
from .optim import lrs_as_tensors
from .step import TrainStep

# The run's progress a checkpoint carries, by the Trainer's attribute names.
PROGRESS = ("epoch", "step", "history", "train_seconds", "images_seen", "resumed_from")


def checkpoint_state(step: TrainStep, cfg: DictConfig, progress: dict[str, Any], own: dict[str, Any],
                     dist: DistContext) -> dict[str, Any]:
    """The checkpoint of a run at ``progress``; ``own`` is this rank's ``rng`` and ``epoch_position``."""
    return {"model": step.model.state_dict(), "optimizer": step.optimizer.state_dict(),
            "per_rank": dist.gather_objects(own), "scheduler": step.scheduler.state_dict(),
            "config": OmegaConf.to_container(cfg), "config_hash": config_hash(cfg), **own, **progress}


def epoch_start(position: dict[str, Any] | None, n_images: int, generator: torch.Generator,
                device: torch.device) -> tuple[Tensor, int, float, Tensor, Tensor]:
    """(order, first batch, seconds, loss sum, mse sum) an epoch starts from: a new permutation
    and zeros, or the ``epoch_position`` a mid-epoch checkpoint saved."""
    if position is None:
        order = torch.randperm(n_images, generator=generator).to(device)
        return order, 0, 0.0, torch.zeros((), device=device), torch.zeros((), device=device)
    return (position["order"].to(device), position["batch"], position["seconds"], position["loss_sum"].to(device),
            position["mse_sum"].to(device))


def restore_checkpoint(state: dict[str, Any], path: Path, step: TrainStep, generator: torch.Generator,
                       dist: DistContext, cuda_graph: bool) -> dict[str, Any]:
    """Load ``state`` into the step's model, optimiser and scheduler and into the RNGs; returns
    the progress to continue from (``PROGRESS`` and ``resume_point``, the epoch position)."""
    try:
        step.model.load_state_dict(state["model"])
        step.optimizer.load_state_dict(state["optimizer"])
        if cuda_graph:  # the file may come from an uncaptured run
            lrs_as_tensors(step.optimizer, step.device)
        step.scheduler.load_state_dict(state["scheduler"])
        mine = state.get("per_rank") or []
        mine = mine[dist.rank] if len(mine) == dist.world_size else \
            {"rng": state["rng"], "epoch_position": state["epoch_position"]}
        set_rng_state(mine["rng"], generator, step.device.type == "cuda")
        return {"epoch": int(state["epoch"]), "step": int(state["step"]), "history": list(state["history"]),
                "train_seconds": float(state["train_seconds"]), "images_seen": int(state["images_seen"]),
                "resumed_from": [*state["resumed_from"], int(state["step"])],
                "resume_point": mine["epoch_position"]}
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"checkpoint {path} does not fit this run ({type(exc).__name__}: "
                        f"{first_line(exc)[:160]}); delete it to start the run over") from exc


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Write ``state`` as the newest checkpoint and keep the one it replaces as the previous.

    The new file is written and fsynced under a temporary name first; then newest → previous
    and temporary → newest are two renames. A kill between them leaves the previous one only
    (resume takes it), so at every moment at least one whole checkpoint is on disk; a failed
    write (disk full) changes neither. A concurrent writer of the same run (two suites) may
    have moved the newest already: then there is nothing to rotate.
    """
    newest, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS_CHECKPOINT

    def rotate() -> None:
        try:
            os.replace(newest, previous)
        except FileNotFoundError:
            pass

    write_atomic(newest, lambda fh: torch.save(state, fh), "wb", before_replace=rotate)


class ResumeWarning(UserWarning):
    """The newest checkpoint could not be used; the run resumes from the previous one."""


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINT).is_file() or (run_dir / PREVIOUS_CHECKPOINT).is_file()


def resume_checkpoint(run_dir: Path, config_hash: str, restore: Callable[[dict[str, Any], Path], dict[str, Any]],
                      is_main: bool = True) -> dict[str, Any]:
    """``restore(state, path)`` of the newest checkpoint that can be read and fits the run.

    A newest that cannot be (truncated, foreign, a tensor that does not fit the model) is
    set aside (renamed ``checkpoint.pt.damaged``, never deleted) and the run resumes from
    the previous one, with one warning naming both. Where neither can be used, one line
    naming both (exit 2) and both files stay where they are.
    """
    newest, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS_CHECKPOINT
    if not newest.is_file():  # killed between the rotation's two renames
        progress = restore(load_checkpoint_file(previous, config_hash), previous)
        _warn(is_main, f"{newest} is missing (the run stopped while replacing it); resuming from {previous} "
                       f"(step {progress['step']})")
        return progress
    try:
        return restore(load_checkpoint_file(newest, config_hash), newest)
    except UserError as exc:
        if not previous.is_file():
            raise
        why = _reason(exc, newest)
        try:
            progress = restore(load_checkpoint_file(previous, config_hash), previous)
        except UserError as again:
            raise UserError(f"neither checkpoint of {run_dir} can be used: {newest.name} {why}; {previous.name} "
                            f"{_reason(again, previous)}; delete its checkpoints to start the run over") from again
    aside = set_aside(newest) if is_main else newest
    _warn(is_main, f"checkpoint {newest} {why}: set aside as {aside.name}; resuming from {previous} "
                   f"(step {progress['step']})")
    return progress


def _reason(exc: UserError, path: Path) -> str:
    """What is wrong with the file, from its one-line error (without the 'checkpoint PATH' and the fix)."""
    return re.split(r"[;:] delete", str(exc).removeprefix(f"checkpoint {path} "), maxsplit=1)[0]


def _warn(is_main: bool, message: str) -> None:
    if is_main:
        warnings.warn(message, ResumeWarning, stacklevel=3)


def set_aside(path: Path) -> Path:
    """Rename ``path`` to ``NAME.damaged`` (``.damaged.2``, ... if taken); never delete it."""
    n, aside = 1, path.with_name(f"{path.name}.damaged")
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.damaged.{n}")
    os.replace(path, aside)
    return aside


def load_checkpoint_file(path: Path, config_hash: str) -> dict[str, Any]:
    """A checkpoint's state on the CPU; a damaged or foreign file, or one of another
    configuration than ``config_hash``, is a one-line UserError.

    ``weights_only``: a checkpoint holds tensors and plain containers only, so loading a
    file someone else put in the run folder cannot run code.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, zipfile.BadZipFile,
            pickle.UnpicklingError) as exc:
        raise UserError(f"checkpoint {path} cannot be read ({first_line(exc)[:160]}); it is damaged or not "
                        "a vqbench checkpoint: delete it to start the run over") from exc
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise UserError(f"checkpoint {path} is not a vqbench checkpoint (no model/step); "
                        "delete it to start the run over")
    if state.get("config_hash") != config_hash:
        raise UserError(f"checkpoint {path} belongs to another configuration (hash {state.get('config_hash')}, "
                        f"this one is {config_hash}); delete it or choose another name= or out=")
    return state


def rng_state(generator: torch.Generator, cuda: bool) -> dict[str, Any]:
    """Every RNG a run draws from: torch's global one (Gumbel/replacement noise), CUDA's,
    numpy's, Python's, and the run's own generator (data order, k-means).

    Plain tensors and lists only, so the checkpoint loads under ``weights_only``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if cuda:
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator, cuda: bool) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if cuda and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
