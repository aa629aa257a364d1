"""``fit(config)``: one training run of the paper's §5.1 recipe, writing a run folder.

AdamW, linear warm-up (from factor 0.2) then cosine decay, k-means codebook initialisation
on encoder outputs, the quantizer's schedules through ``set_progress``. The train split
lives on the device as uint8 and is batched by indexing (no DataLoader). Evaluation on
the test split is noise-free (``eval()``).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from . import __version__
from . import distributed
from .config import config_hash, resolve_config
from .data import ImageData, load_dataset
from .errors import UserError, first_line
from .stepgraph import GraphedStep, check_cuda_graph
from .training import (_check_shapes, _progress, build_model, collect_latents, compile_model,  # noqa: F401
                       evaluate, kmeans_image_count, lr_factor, lrs_as_tensors, make_optimizer, mean_image_mse,
                       resolve_device, seed_everything, to_float_images)
from .runio import (CHECKPOINT, CONFIG, METRICS, SUMMARY, check_run_dir_matches, load_checkpoint_file,
                    prepare_run_dir, read_metrics, read_summary, rng_state, run_dir_for, save_checkpoint,
                    set_rng_state, write_json_atomic, write_jsonl_atomic, write_text_atomic)

# Finiteness is checked every this many steps (one host sync), at every checkpoint and epoch end.
CHECK_EVERY = 10


class DivergenceError(RuntimeError):
    """The loss became non-finite; the run stops, keeps its last good checkpoint and is
    marked ``status: failed`` in its summary (``summary`` holds it once ``fit`` wrote it)."""

    def __init__(self, message: str, step: int | None = None, loss: float | None = None,
                 terms: list[str] | None = None, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.step, self.loss, self.terms, self.summary = step, loss, list(terms or []), summary


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]]


class Trainer:
    """One run, split where engineers extend it: the hot ``train_step``, ``run_epoch``,
    ``evaluate``, checkpoint state, and ``fit`` that strings them together."""

    def __init__(self, cfg: DictConfig, data: ImageData | None = None,
                 log: Callable[[str], None] | None = None,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None, resume: bool = False) -> None:
        self.cfg = cfg
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.on_epoch = on_epoch
        self.dist = distributed.setup(resolve_device(cfg.device))  # torchrun: rank, world, device
        self.device = self.dist.device
        if not self.dist.is_main:
            self.log = lambda line: None
        if self.device.type == "cpu":
            # Some CPU kernels (index_add_/index_put_ accumulation) split work across
            # threads in a run-dependent order; the deterministic ones make a seed a result.
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.seed)
        self.data = data or self.dist.main_first(load_dataset, cfg.data)
        _check_shapes(cfg, self.data)

        self.use_cuda = self.device.type == "cuda"
        self.channels_last = bool(cfg.train.channels_last and self.use_cuda)
        self.model = build_model(cfg).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        check_cuda_graph(cfg, self.device, self.dist.world_size > 1, self.model.quantizer)
        try:
            self.model.quantizer.check_device(self.device)
        except ValueError as exc:
            raise UserError(f"quantizer {cfg.quantizer.name!r}: {exc}") from exc
        # "high" lets fp32 matmuls (the quantizer's distances) use TF32 tensor cores.
        torch.set_float32_matmul_precision(cfg.train.matmul_precision)
        self.cudagraphs = compile_model(self.model, cfg.train.compile)
        self.graphed_step: GraphedStep | None = None
        self.model = self.dist.prepare_model(self.model, cfg.seed)  # DDP when distributed
        amp = cfg.train.amp if cfg.train.amp != "auto" else ("bf16" if self.use_cuda else "none")
        self.amp_dtype = torch.bfloat16 if amp == "bf16" else None
        # Read once, not per step. A captured graph must not reuse autocast's cast cache.
        self.autocast_cache, self.grad_clip = not cfg.train.cuda_graph, cfg.train.grad_clip

        # Whole splits on the device as uint8; batches are gathered by index.
        self.train_images = self.data.train.to(self.device)
        self.test_images = self.data.test.to(self.device)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.batch_size = min(cfg.train.batch_size, len(self.train_images))
        self.steps_per_epoch = len(self.train_images) // self.batch_size
        self.batch_size = self.dist.local_batch_size(self.batch_size)  # this rank's share
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.step = 0
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self.images_seen = 0
        self.resumed_from: list[int] = []
        self.resume_point: dict[str, Any] | None = None  # mid-epoch position restored from a checkpoint
        self.epoch_position: dict[str, Any] | None = None  # the running epoch's, for checkpoints
        self.last_checkpoint_step: int | None = None
        # Everything a user can get wrong is checked above and here, before the run folder exists.
        self._check_kmeans_samples()
        run_dir = run_dir_for(cfg)
        check_run_dir_matches(run_dir, cfg)
        if resume and not (run_dir / CONFIG).is_file():
            raise UserError(f"nothing to resume: {run_dir} holds no run; drop --resume to start it")
        if cfg.get("results"):
            from .results import rows_dir

            self.dist.call_on_main(rows_dir, cfg.results)  # a bad results= fails now, not after training
        self.run_dir = self.dist.call_on_main(prepare_run_dir, cfg)

    def _check_kmeans_samples(self) -> None:
        if not self.cfg.train.kmeans_init:
            return
        num_codes = self.model.quantizer.num_codes
        n_images, per_image = kmeans_image_count(self.model, self.train_images.shape, self.cfg.train.kmeans_samples)
        if n_images * per_image < num_codes:
            raise UserError(
                f"k-means needs at least {num_codes} encoder outputs (one per code) but gets {n_images * per_image} "
                f"({n_images} training image{'s' * (n_images != 1)} x {per_image} latents, train.kmeans_samples="
                f"{self.cfg.train.kmeans_samples}); lower quantizer.num_codes, raise train.kmeans_samples, "
                "use more images, or set train.kmeans_init=false")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None, cache_enabled=self.autocast_cache)

    def init_codebook(self) -> None:
        cfg, quantizer = self.cfg, self.model.quantizer
        samples = collect_latents(self.model, self.train_images, cfg.train.kmeans_samples, self.generator,
                                  cfg.train.eval_batch_size, self.channels_last)
        quantizer.init_codebook(samples, generator=self.generator)

    def setup_optimization(self) -> None:
        cfg = self.cfg
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, self.total_steps, cfg.train.warmup_fraction, cfg.train.warmup_start_factor))
        if cfg.train.cuda_graph:
            self.graphed_step = GraphedStep(self)

    def train_step(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """One optimiser step on a batch; returns (loss, mse, quantizer terms), not synced."""
        self.before_update()
        result = self.update(x)
        self.after_update()
        return result

    def step_batch(self, indices: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``train_step`` on the training images at ``indices`` (a device tensor), gathered on
        the device; the whole step is one CUDA-graph replay with ``train.cuda_graph``."""
        if self.graphed_step is not None:
            return self.graphed_step(indices)
        return self.train_step(to_float_images(self.train_images[indices], self.channels_last))

    def before_update(self) -> None:
        """Host-side state of this step: τ's schedule (a buffer write)."""
        if self.cudagraphs:  # the previous step's graph outputs may now be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        self.model.quantizer.set_progress(self.step / max(self.total_steps - 1, 1))

    def update(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Forward, loss, backward, clipping, AdamW: the part a CUDA graph can hold."""
        model = self.model
        with self.autocast():
            x_hat, out = model(x)
        x_hat = x_hat.float()
        loss = model.quantizer.reconstruction_loss(x, x_hat) + out.loss
        if self.graphed_step is None:  # a captured backward writes fresh .grad (stepgraph)
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
        finite = torch.isfinite(self.dist.all_sum(torch.stack([loss.float() for _, loss, _ in window])))
        if not bool(finite.all()):
            step, loss, terms = window[int((~finite).nonzero()[0])]
            bad = [k for k, v in terms.items() if not bool(torch.isfinite(v).all())]
            raise DivergenceError(f"loss became {float(loss)} at step {step}"
                                  + (f" (non-finite terms: {', '.join(bad)})" if bad else " (all loss terms finite)"),
                                  step=step, loss=float(loss), terms=bad)
        window.clear()

    def run_epoch(self, bar) -> dict[str, Any]:
        """Train one epoch (or until total_steps), evaluate, and return its metrics record.

        Continues a checkpointed epoch where ``resume_point`` says (same permutation, next
        batch, same running sums); writes a checkpoint every ``train.checkpoint_every`` steps.
        """
        self.model.train()
        resumed, self.resume_point = self.resume_point, None
        if resumed is None:
            order = torch.randperm(len(self.train_images), generator=self.generator).to(self.device)
            first, seconds_before = 0, 0.0
            loss_sum = torch.zeros((), device=self.device)
            mse_sum = torch.zeros((), device=self.device)
        else:
            order, first, seconds_before = resumed["order"].to(self.device), resumed["batch"], resumed["seconds"]
            loss_sum, mse_sum = resumed["loss_sum"].to(self.device), resumed["mse_sum"].to(self.device)
        full_order, order = order, self.dist.shard_order(order, self.batch_size)  # checkpoints keep the full one
        every = self.cfg.train.checkpoint_every
        steps, terms, loss = first, {}, loss_sum
        window: list[tuple[int, Tensor, dict[str, Tensor]]] = []
        t0 = time.perf_counter()
        for b in range(first, self.steps_per_epoch):
            if self.step >= self.total_steps:
                break
            loss, mse, terms = self.step_batch(order[b * self.batch_size:(b + 1) * self.batch_size])
            loss_sum += loss
            mse_sum += mse
            steps += 1
            self.step += 1
            window.append((self.step, loss, terms))
            if self.step % CHECK_EVERY == 0 or self.step == self.total_steps:
                self.check_finite(window)
                bar.set_postfix(epoch=self.epoch + 1, loss=f"{float(loss):.4f}")
            # Mid-epoch checkpoint; the epoch's last step is covered by the epoch-end one.
            if every and self.step % every == 0 and b + 1 < self.steps_per_epoch and self.step < self.total_steps:
                self.check_finite(window)  # never checkpoint a diverged state
                self.epoch_position = {"order": full_order.cpu(), "batch": b + 1, "loss_sum": loss_sum.cpu(),
                                       "mse_sum": mse_sum.cpu(),
                                       "seconds": seconds_before + time.perf_counter() - t0}
                self.write_checkpoint()
            bar.update(1)
        if self.use_cuda:
            torch.cuda.synchronize()
        seconds = seconds_before + time.perf_counter() - t0
        self.check_finite(window)
        self.epoch_position = None
        self.train_seconds += seconds
        self.images_seen += steps * self.batch_size
        self.epoch += 1
        metrics = self.evaluate()
        return {"epoch": self.epoch, "step": self.step,
                "train_loss": float(loss_sum) / max(steps, 1), "train_mse": float(mse_sum) / max(steps, 1),
                **metrics, "lr": float(self.scheduler.get_last_lr()[0]),
                "images_per_s": steps * self.batch_size / max(seconds, 1e-9),
                **{f"q_{k}": float(v) for k, v in terms.items() if v.numel() == 1}}

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.model, self.test_images, self.cfg.train.eval_batch_size,
                        self.channels_last, self.autocast)

    def checkpoint_state(self) -> dict[str, Any]:
        """All a resumed run needs to continue bit for bit: weights and quantizer buffers
        (codebook, usage counters, τ), optimiser, scheduler, every RNG, the data-order
        position, counters and history. Tensors and plain containers only (``weights_only``)."""
        # Each rank draws its own noise and sums its own losses: under DDP every rank's RNG
        # and running sums go into rank 0's file, and each rank restores its own.
        mine = {"rng": rng_state(self.generator, self.use_cuda), "epoch_position": self.epoch_position}
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "per_rank": self.dist.gather_objects(mine),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "step": self.step,
                "history": self.history, "config": OmegaConf.to_container(self.cfg),
                "config_hash": config_hash(self.cfg), **mine, "train_seconds": self.train_seconds,
                "images_seen": self.images_seen, "resumed_from": self.resumed_from}

    def write_checkpoint(self) -> None:
        # Rank 0 writes; every rank returns once the file is complete, so all resume from it.
        self.dist.call_on_main(save_checkpoint, self.run_dir / CHECKPOINT, self.checkpoint_state())
        self.last_checkpoint_step = self.step

    def load_checkpoint(self, path: Path) -> None:
        """Restore what ``checkpoint_state`` saved; the next ``run_epoch`` continues from it."""
        state = load_checkpoint_file(path)
        if state.get("config_hash") != config_hash(self.cfg):
            raise UserError(f"checkpoint {path} belongs to another configuration (hash {state.get('config_hash')}, "
                            f"this one is {config_hash(self.cfg)}); delete it or choose another name= or out=")
        if self.optimizer is None:
            self.setup_optimization()
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.cfg.train.cuda_graph:  # the file may come from an uncaptured run
                lrs_as_tensors(self.optimizer, self.device)
            self.scheduler.load_state_dict(state["scheduler"])
            mine = state.get("per_rank") or []
            mine = mine[self.dist.rank] if len(mine) == self.dist.world_size else \
                {"rng": state["rng"], "epoch_position": state["epoch_position"]}
            set_rng_state(mine["rng"], self.generator, self.use_cuda)
            self.epoch, self.step, self.history = int(state["epoch"]), int(state["step"]), list(state["history"])
            self.train_seconds, self.images_seen = float(state["train_seconds"]), int(state["images_seen"])
            self.resumed_from = [*state["resumed_from"], self.step]
            self.resume_point = mine["epoch_position"]
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise UserError(f"checkpoint {path} does not fit this run ({type(exc).__name__}: "
                            f"{first_line(exc)[:160]}); delete it to start the run over") from exc
        self.last_checkpoint_step = self.step

    def _identity(self) -> dict[str, Any]:
        """What both summaries say of the run: which one it is, how far it got, on what."""
        cfg = self.cfg
        return {
            "run_id": self.run_dir.name, "run_dir": str(self.run_dir), "config_hash": config_hash(cfg),
            "quantizer": cfg.quantizer.name, "dataset": cfg.data.name, "model": cfg.model.name, "seed": cfg.seed,
            "epochs": self.epoch, "steps": self.step, "num_codes": self.model.quantizer.num_codes,
            "device": self.device.type, "torch": torch.__version__, "vqbench": __version__,
            "resumed_from": self.resumed_from,
        }

    def summary(self) -> dict[str, Any]:
        final = self.history[-1]
        return {
            "status": "finished", **self._identity(),
            "mse": final["mse"], "perplexity": final["perplexity"],
            "code_perplexity": final["code_perplexity"], "codes_used": final["codes_used"],
            "mean_image_mse": mean_image_mse(self.data.train, self.data.test),
            "images_per_s": self.images_seen * self.dist.world_size / max(self.train_seconds, 1e-9),
            "steady_images_per_s": steady_throughput(self.history, self.batch_size * self.dist.world_size),
            "train_seconds": self.train_seconds,
            "train_images": len(self.train_images), "test_images": len(self.test_images),
            "wall_s": time.perf_counter() - self.started, "world_size": self.dist.world_size,
            "device_name": torch.cuda.get_device_name(self.device) if self.use_cuda else "cpu",
        }

    def failed_summary(self, exc: DivergenceError) -> dict[str, Any]:
        """``status: failed`` with no metrics, so no table or sweep can read it as a score."""
        return {
            "status": "failed", "error": str(exc), "failed_step": exc.step, "nonfinite_terms": exc.terms,
            "last_checkpoint_step": self.last_checkpoint_step, **self._identity(),
        }

    def fit(self) -> RunResult:
        """Train to the end, resuming from the run folder's checkpoint where there is one.

        A finished run is not retrained (its summary is returned); a failed one is not
        retried. On resume ``on_epoch`` first sees the restored epochs' records, so a
        callback (a sweep trial reporting to Optuna) sees every epoch once per call.
        """
        self.started = time.perf_counter()
        name, metrics_path = self.run_dir.name, self.run_dir / METRICS
        previous = read_summary(self.run_dir)
        if previous is not None and previous["status"] == "finished":
            self.log(f"run {name} already finished ({previous.get('steps')} steps); not retraining "
                     f"(delete {self.run_dir} to train it again)")
            return RunResult(run_dir=self.run_dir, summary=previous, history=read_metrics(self.run_dir))
        if previous is not None:
            raise DivergenceError(f"run {name} already failed: {previous.get('error')}; not retrying the same "
                                  f"configuration (change it, e.g. lower train.lr, or delete {self.run_dir})",
                                  step=previous.get("failed_step"), terms=previous.get("nonfinite_terms"),
                                  summary=previous)
        if (self.run_dir / CHECKPOINT).is_file():
            self.load_checkpoint(self.run_dir / CHECKPOINT)
            self.dist.call_on_main(write_jsonl_atomic, metrics_path, self.history)  # drop records written after the checkpoint
            where = f", batch {self.resume_point['batch']} of epoch {self.epoch + 1}" if self.resume_point else ""
            self.log(f"resuming {name} from step {self.step}/{self.total_steps}{where}")
            if self.on_epoch is not None:
                for record in self.history:
                    self.dist.call_on_main(self.on_epoch, record)
        else:
            self.dist.call_on_main(write_text_atomic, self.run_dir / CONFIG, OmegaConf.to_yaml(self.cfg))
            if self.cfg.train.kmeans_init:
                self.init_codebook()
            self.setup_optimization()
            self.dist.call_on_main(write_text_atomic, metrics_path, "")
        bar = _progress(self.total_steps, self.cfg.quantizer.name)
        bar.update(self.step)
        try:
            while self.epoch < self.epochs:
                record = self.dist.sync_record(self.run_epoch(bar))  # identical on every rank
                self.history.append(record)
                self.write_checkpoint()
                if self.dist.is_main:
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps(record) + "\n")
                if self.on_epoch is not None:
                    self.dist.call_on_main(self.on_epoch, record)  # a prune stops every rank
                self.log(f"epoch {self.epoch}/{self.epochs}  step {self.step}  loss {record['train_loss']:.5f}  "
                         f"test mse {record['mse']:.5f}  perplexity {record['perplexity']:.1f}  "
                         f"codes {record['codes_used']}  {record['images_per_s']:.0f} img/s")
        except DivergenceError as exc:
            bar.close()
            summary = self.failed_summary(exc)
            self.dist.call_on_main(write_json_atomic, self.run_dir / SUMMARY, summary)
            kept = (f"kept the last good checkpoint (step {self.last_checkpoint_step})"
                    if self.last_checkpoint_step is not None else "no checkpoint had been written")
            raise DivergenceError(f"{exc}; {kept}; run marked failed in {self.run_dir / SUMMARY}",
                                  step=exc.step, loss=exc.loss, terms=exc.terms, summary=summary) from exc
        bar.close()
        summary = self.summary()
        if self.cfg.get("results"):  # one tidy row per finished run (vqbench table / results)
            from .results import append_row

            # The row first: a kill between the two leaves no summary, so a re-run resumes
            # and rewrites the same row (keyed by run id) instead of losing it.
            self.dist.call_on_main(append_row, self.cfg.results, self.cfg, summary)
        self.dist.call_on_main(write_json_atomic, self.run_dir / SUMMARY, summary)
        return RunResult(run_dir=self.run_dir, summary=summary, history=self.history)


def steady_throughput(history: list[dict[str, Any]], images_per_step: int) -> float | None:
    """Images/s over the epochs after the first, which alone pays for compiling and CUDA-graph
    capture (``images_per_s`` counts it); None for a one-epoch run."""
    images = seconds = 0.0
    for before, record in zip(history, history[1:]):
        epoch_images = (record["step"] - before["step"]) * images_per_step
        images, seconds = images + epoch_images, seconds + epoch_images / max(record["images_per_s"], 1e-9)
    return images / seconds if seconds > 0 else None


def fit(config: DictConfig | dict | None = None, *, data: ImageData | None = None,
        log: Callable[[str], None] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None, resume: bool = False) -> RunResult:
    """Train one run; returns its summary and per-epoch history and writes its run folder.

    Re-running a configuration continues its run folder (named by the config hash) from
    the last checkpoint; a finished run is returned, not retrained. ``resume=True`` also
    insists that the run folder exists. A non-finite loss raises :class:`DivergenceError`
    after marking the run ``status: failed``.

    ``config`` may be a resolved DictConfig or a plain dict (resolved here, like the CLI).
    ``on_epoch(record)`` sees each epoch's metrics (a sweep reports them to Optuna; raising
    stops the run, e.g. for pruning).
    """
    resolved = isinstance(config, DictConfig) and "num_codes" in config.get("quantizer", {})
    cfg = config if resolved else resolve_config(base=config or {})
    try:
        return Trainer(cfg, data=data, log=log, on_epoch=on_epoch, resume=resume).fit()
    finally:
        distributed.shutdown()  # the process group, if this run created it (torchrun)
