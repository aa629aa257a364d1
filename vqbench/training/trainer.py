"""``Trainer``: one run from the checks before its run folder exists to its summary.

k-means codebook initialisation on encoder outputs, then epochs of :class:`TrainStep`
on batches gathered by index from the device-resident uint8 train split (no DataLoader),
each ending with the noise-free test evaluation, a checkpoint and a metrics record.
"""
from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ..config import config_hash
from ..data import ImageData, load_dataset
from ..rundir import (CONFIG, METRICS, SUMMARY, check_run_dir, prepare_run_dir, write_json_atomic,
                      write_jsonl_atomic, write_text_atomic)
from . import ddp
from .checkpoint import (PROGRESS, checkpoint_state, epoch_start, has_checkpoint, load_checkpoint_file,
                         restore_checkpoint, resume_checkpoint, rng_state, save_checkpoint)
from .evaluation import evaluate
from .graph import GraphedStep, check_cuda_graph
from .kmeans import check_kmeans_samples, init_codebook
from .optim import make_optimizer, make_scheduler
from .setup import (build_model, check_quantizer_device, check_shapes, compile_model, progress_bar,
                    resolve_device, seed_everything, step_plan)
from .step import DivergenceError, StepResult, TrainStep, make_autocast
from .tblog import tensorboard_log
from .summary import (RunResult, failed_summary, finished_summary, marked_failed, previous_result, run_identity,
                      write_finished)

# Finiteness is checked every this many steps (one host sync), at every checkpoint and epoch end.
CHECK_EVERY = 10


class Trainer:
    """One run: the checks before the run folder exists (``__init__``), the epoch loop,
    checkpoints and resume, and both summaries. The optimiser step itself is ``stepper``
    (a :class:`TrainStep`; ``graphed_step`` replays it from a CUDA graph)."""

    def __init__(self, cfg: DictConfig, data: ImageData | None = None,
                 log: Callable[[str], None] | None = None,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None, resume: bool = False) -> None:
        self.cfg, self.on_epoch = cfg, on_epoch
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.dist = ddp.setup(resolve_device(cfg.device))  # torchrun: rank, world, device
        self.device = self.dist.device
        if not self.dist.is_main:
            self.log = lambda line: None
        if self.device.type == "cpu":
            # Some CPU kernels (index_add_/index_put_ accumulation) split work across
            # threads in a run-dependent order; the deterministic ones make a seed a result.
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.seed)
        self.data = data or self.dist.main_first(load_dataset, cfg.data)
        check_shapes(cfg, self.data)

        self.use_cuda = self.device.type == "cuda"
        self.channels_last = bool(cfg.train.channels_last and self.use_cuda)
        self.model = build_model(cfg).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        check_cuda_graph(cfg, self.device, self.dist.world_size > 1, self.model.quantizer)
        check_quantizer_device(cfg, self.model.quantizer, self.device)
        # "high" lets fp32 matmuls (the quantizer's distances) use TF32 tensor cores.
        torch.set_float32_matmul_precision(cfg.train.matmul_precision)
        self.cudagraphs = compile_model(self.model, cfg.train.compile)
        self.model = self.dist.prepare_model(self.model, cfg.seed)  # DDP when distributed
        self.autocast = make_autocast(self.device, cfg.train.amp, cfg.train.cuda_graph)
        self.optimizer = self.scheduler = self.stepper = None  # setup_optimization builds them
        self.graphed_step: GraphedStep | None = None

        # Whole splits on the device as uint8; batches are gathered by index.
        self.train_images = self.data.train.to(self.device)
        self.test_images = self.data.test.to(self.device)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.batch_size, self.steps_per_epoch, self.total_steps, self.epochs = step_plan(
            cfg.train, len(self.train_images), self.dist)  # batch_size: this rank's share
        self.epoch = self.step = self.images_seen = 0
        self.train_seconds = 0.0
        self.history: list[dict[str, Any]] = []
        self.resumed_from: list[int] = []
        self.resume_point: dict[str, Any] | None = None  # mid-epoch position restored from a checkpoint
        self.epoch_position: dict[str, Any] | None = None  # the running epoch's, for checkpoints
        self.last_checkpoint_step: int | None = None
        # Everything a user can get wrong is checked above and here, before the run folder exists.
        check_kmeans_samples(self.model, self.train_images.shape, cfg.train)
        self.tb = tensorboard_log(cfg, self.dist.is_main)  # train.log=tensorboard: the package is there
        check_run_dir(cfg, resume)
        if cfg.get("results"):
            from ..rows import rows_dir

            self.dist.call_on_main(rows_dir, cfg.results)  # a bad results= fails now, not after training
        self.run_dir = self.dist.call_on_main(prepare_run_dir, cfg)

    def setup_optimization(self) -> None:
        self.optimizer = make_optimizer(self.model, self.cfg, self.device)
        self.scheduler = make_scheduler(self.optimizer, self.total_steps, self.cfg.train)
        self.stepper = TrainStep(self.model, self.optimizer, self.scheduler, self.train_images, self.total_steps,
                                 self.autocast, channels_last=self.channels_last, grad_clip=self.cfg.train.grad_clip,
                                 cudagraphs=self.cudagraphs, all_sum=self.dist.all_sum)
        if self.cfg.train.cuda_graph:
            self.graphed_step = GraphedStep(self.stepper)

    def train_step(self, x: Tensor) -> StepResult:
        """One optimiser step on the float batch ``x`` at the current step number."""
        return self.stepper(x, self.step)

    def step_batch(self, indices: Tensor) -> StepResult:
        """One step on the training images at ``indices``; one CUDA-graph replay with ``train.cuda_graph``."""
        if self.graphed_step is not None:
            return self.graphed_step(indices, self.step)
        return self.stepper(self.stepper.batch(indices), self.step)

    def run_epoch(self, bar) -> dict[str, Any]:
        """Train one epoch (or until total_steps), evaluate, and return its metrics record.

        Continues a checkpointed epoch where ``resume_point`` says (same permutation, next
        batch, same running sums); writes a checkpoint every ``train.checkpoint_every`` steps.
        """
        self.model.train()
        order, first, seconds_before, loss_sum, mse_sum = epoch_start(self.resume_point, len(self.train_images),
                                                                      self.generator, self.device)
        self.resume_point = None
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
                self.stepper.check_finite(window)
                bar.set_postfix(epoch=self.epoch + 1, loss=f"{float(loss):.4f}")
            # Mid-epoch checkpoint; the epoch's last step is covered by the epoch-end one.
            if every and self.step % every == 0 and b + 1 < self.steps_per_epoch and self.step < self.total_steps:
                self.stepper.check_finite(window)  # never checkpoint a diverged state
                self.epoch_position = {"order": full_order.cpu(), "batch": b + 1, "loss_sum": loss_sum.cpu(),
                                       "mse_sum": mse_sum.cpu(), "seconds": seconds_before + time.perf_counter() - t0}
                self.write_checkpoint()
            bar.update(1)
        if self.use_cuda:
            torch.cuda.synchronize()
        seconds = seconds_before + time.perf_counter() - t0
        self.stepper.check_finite(window)
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
        return evaluate(self.model, self.test_images, self.cfg.train.eval_batch_size, self.channels_last,
                        self.autocast)

    def write_checkpoint(self) -> None:
        """What a resumed run needs to continue bit for bit (:mod:`.checkpoint`). Rank 0 writes;
        every rank returns once the file is complete, so all resume from it."""
        own = {"rng": rng_state(self.generator, self.use_cuda), "epoch_position": self.epoch_position}
        state = checkpoint_state(self.stepper, self.cfg, {key: getattr(self, key) for key in PROGRESS}, own, self.dist)
        self.dist.call_on_main(save_checkpoint, self.run_dir, state)  # the one it replaces stays as the previous
        self.last_checkpoint_step = self.step

    def load_checkpoint(self, path: Path | None = None) -> None:
        """Restore what ``write_checkpoint`` saved (``path``, else the newest usable of the run
        folder's two: :func:`.checkpoint.resume_checkpoint`); the next ``run_epoch`` continues from it."""
        if self.stepper is None:
            self.setup_optimization()
        restore = partial(restore_checkpoint, step=self.stepper, generator=self.generator, dist=self.dist,
                          cuda_graph=self.cfg.train.cuda_graph)
        progress = (restore(load_checkpoint_file(path, config_hash(self.cfg)), path) if path is not None else
                    resume_checkpoint(self.run_dir, config_hash(self.cfg), restore, self.dist.is_main))
        for key, value in progress.items():
            setattr(self, key, value)
        self.last_checkpoint_step = self.step

    def _identity(self) -> dict[str, Any]:
        return run_identity(self.cfg, self.run_dir, self.epoch, self.step, self.model.quantizer.num_codes,
                            self.device, self.resumed_from)

    def fit(self) -> RunResult:
        """Train to the end, resuming from the run folder's checkpoint where there is one.

        A finished run is not retrained (its summary is returned); a failed one is not
        retried. On resume ``on_epoch`` first sees the restored epochs' records, so a
        callback (a sweep trial reporting to Optuna) sees every epoch once per call.
        """
        self.started = time.perf_counter()
        name, metrics_path = self.run_dir.name, self.run_dir / METRICS
        previous = previous_result(self.run_dir, self.log)  # finished: returned; failed: raised
        if previous is not None:
            return previous
        if has_checkpoint(self.run_dir):
            self.load_checkpoint()
            self.dist.call_on_main(write_jsonl_atomic, metrics_path, self.history)  # drop records written after the checkpoint
            where = f", batch {self.resume_point['batch']} of epoch {self.epoch + 1}" if self.resume_point else ""
            self.log(f"resuming {name} from step {self.step}/{self.total_steps}{where}")
            if self.on_epoch is not None:
                for record in self.history:
                    self.dist.call_on_main(self.on_epoch, record)
        else:
            self.dist.call_on_main(write_text_atomic, self.run_dir / CONFIG, OmegaConf.to_yaml(self.cfg))
            if self.cfg.train.kmeans_init:
                init_codebook(self.model, self.train_images, self.cfg.train, self.generator, self.channels_last)
            self.setup_optimization()
            self.dist.call_on_main(write_text_atomic, metrics_path, "")
        bar = progress_bar(self.total_steps, self.cfg.quantizer.name)
        bar.update(self.step)
        try:
            while self.epoch < self.epochs:
                record = self.dist.sync_record(self.run_epoch(bar))  # identical on every rank
                self.history.append(record)
                self.write_checkpoint()
                self.dist.call_on_main(write_jsonl_atomic, metrics_path, self.history)  # never half a line
                self.tb.epoch(self)  # train.log=tensorboard: scalars, every N epochs a reconstruction grid
                if self.on_epoch is not None:
                    self.dist.call_on_main(self.on_epoch, record)  # a prune stops every rank
                self.log(f"epoch {self.epoch}/{self.epochs}  step {self.step}  loss {record['train_loss']:.5f}  "
                         f"test mse {record['mse']:.5f}  perplexity {record['perplexity']:.1f}  "
                         f"codes {record['codes_used']}  {record['images_per_s']:.0f} img/s")
        except DivergenceError as exc:
            bar.close()
            summary = failed_summary(self._identity(), exc, self.last_checkpoint_step)
            self.dist.call_on_main(write_json_atomic, self.run_dir / SUMMARY, summary)
            raise marked_failed(exc, summary, self.run_dir / SUMMARY) from exc
        bar.close()
        summary = finished_summary(self._identity(), self.history, self.data, self.images_seen, self.train_seconds,
                                   self.dist.world_size, self.batch_size * self.dist.world_size, self.started,
                                   self.device)
        self.dist.call_on_main(write_finished, self.cfg, self.run_dir, summary, self.history)
        return RunResult(run_dir=self.run_dir, summary=summary, history=self.history)

