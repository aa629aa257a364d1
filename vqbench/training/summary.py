"""What a run says of itself in ``summary.json``: which run it is and how far it got (both
summaries), the test metrics of its last epoch and its throughput (finished), or why it
stopped (failed: no metrics, so no table or sweep can read it as a score); and what an
earlier attempt's summary means for this one."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig

from ..config import config_hash
from ..data import ImageData
from ..rundir import PREVIOUS_CHECKPOINT, SUMMARY, read_metrics, read_summary, write_json_atomic
from ..version import __version__
from .evaluation import mean_image_mse
from .step import DivergenceError


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]]


def previous_result(run_dir: Path, log: Callable[[str], None]) -> RunResult | None:
    """A finished run's result, which is not retrained; None where no attempt finished or
    failed. A failed run raises its DivergenceError again: it is not retried."""
    previous = read_summary(run_dir)
    if previous is not None and previous["status"] == "finished":
        log(f"run {run_dir.name} already finished ({previous.get('steps')} steps); not retraining "
            f"(delete {run_dir} to train it again)")
        return RunResult(run_dir=run_dir, summary=previous, history=read_metrics(run_dir))
    if previous is not None:
        raise DivergenceError(f"run {run_dir.name} already failed: {previous.get('error')}; not retrying the same "
                              f"configuration (change it, e.g. lower train.lr, or delete {run_dir})",
                              step=previous.get("failed_step"), terms=previous.get("nonfinite_terms"),
                              summary=previous)
    return None


def write_finished(cfg: DictConfig, run_dir: Path, summary: dict[str, Any],
                   history: list[dict[str, Any]] | None = None) -> None:
    """The run's tidy result row (``results=``; vqbench table / results), then its summary.

    The row first: a kill between the two leaves no summary, so a re-run resumes and
    rewrites the same row (keyed by run id) instead of losing it. A finished run resumes
    no more, so its previous checkpoint goes (the newest stays, with the final weights)."""
    if cfg.get("results"):
        from ..rows import append_row

        append_row(cfg.results, cfg, summary, history=history)
    write_json_atomic(run_dir / SUMMARY, summary)
    with contextlib.suppress(OSError):
        (run_dir / PREVIOUS_CHECKPOINT).unlink(missing_ok=True)


def run_identity(cfg: DictConfig, run_dir: Path, epochs: int, steps: int, num_codes: int, device: torch.device,
                 resumed_from: list[int]) -> dict[str, Any]:
    """What both summaries say of the run: which one it is, how far it got, on what."""
    return {
        "run_id": run_dir.name, "run_dir": str(run_dir), "config_hash": config_hash(cfg),
        "quantizer": cfg.quantizer.name, "dataset": cfg.data.name, "model": cfg.model.name, "seed": cfg.seed,
        "epochs": epochs, "steps": steps, "num_codes": num_codes,
        "device": device.type, "torch": torch.__version__, "vqbench": __version__,
        "resumed_from": resumed_from,
    }


def finished_summary(identity: dict[str, Any], history: list[dict[str, Any]], data: ImageData, images_seen: int,
                     train_seconds: float, world_size: int, images_per_step: int, started: float,
                     device: torch.device) -> dict[str, Any]:
    """The last epoch's test metrics, the mean-image baseline and the throughput (all ranks)."""
    final = history[-1]
    return {
        "status": "finished", **identity,
        "mse": final["mse"], "perplexity": final["perplexity"],
        "code_perplexity": final["code_perplexity"], "codes_used": final["codes_used"],
        **{m: final.get(m) for m in ("psnr", "ssim", "usage")},  # None in a record from before them
        "mean_image_mse": mean_image_mse(data.train, data.test),
        "images_per_s": images_seen * world_size / max(train_seconds, 1e-9),
        "steady_images_per_s": steady_throughput(history, images_per_step),
        "train_seconds": train_seconds,
        "train_images": len(data.train), "test_images": len(data.test),  # test_images: the evaluated ones
        "eval_split": data.eval_split,  # metrics of the test split, or of held-out training images
        "wall_s": time.perf_counter() - started, "world_size": world_size,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def failed_summary(identity: dict[str, Any], exc: DivergenceError, last_checkpoint_step: int | None) -> dict[str, Any]:
    """``status: failed`` with no metrics, so no table or sweep can read it as a score."""
    return {
        "status": "failed", "error": str(exc), "failed_step": exc.step, "nonfinite_terms": exc.terms,
        "last_checkpoint_step": last_checkpoint_step, **identity,
    }


def marked_failed(exc: DivergenceError, summary: dict[str, Any], path: Path) -> DivergenceError:
    """``exc`` again, saying what was kept and where the run is marked failed."""
    step = summary["last_checkpoint_step"]
    kept = f"kept the last good checkpoint (step {step})" if step is not None else "no checkpoint had been written"
    return DivergenceError(f"{exc}; {kept}; run marked failed in {path}",
                           step=exc.step, loss=exc.loss, terms=exc.terms, summary=summary)


def steady_throughput(history: list[dict[str, Any]], images_per_step: int) -> float | None:
    """Images/s over the epochs after the first, which alone pays for compiling and CUDA-graph
    capture (``images_per_s`` counts it); None for a one-epoch run."""
    images = seconds = 0.0
    for before, record in zip(history, history[1:]):
        epoch_images = (record["step"] - before["step"]) * images_per_step
        images, seconds = images + epoch_images, seconds + epoch_images / max(record["images_per_s"], 1e-9)
    return images / seconds if seconds > 0 else None
