"""``fit(config)``: one training run of the paper's §5.1 recipe, writing a run folder.

AdamW, linear warm-up (from factor 0.2) then cosine decay, k-means codebook initialisation
on encoder outputs, the quantizer's schedules through ``set_progress``. The train split
lives on the device as uint8 and is batched by indexing (no DataLoader). Evaluation on
the test split is noise-free (``eval()``).
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

import quantizers.functional as Fq

from . import __version__
from .config import config_hash, resolve_config
from .data import ImageData, load_dataset
from .errors import UserError
from .registry import build_quantizer, registry_document
from .models import ConvAutoencoder


class DivergenceError(RuntimeError):
    """The loss became non-finite; the run stops and is marked failed."""


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]]


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


def build_model(cfg: DictConfig) -> ConvAutoencoder:
    qkwargs = {k: v for k, v in OmegaConf.to_container(cfg.quantizer).items() if k != "name"}
    quantizer = build_quantizer(cfg.quantizer.name, **qkwargs)
    spec = registry_document()["models"][cfg.model.name]
    module_name, _, cls_name = spec["class"].partition(":")
    cls = getattr(__import__(module_name, fromlist=[cls_name]), cls_name)
    return cls(quantizer, latent_dim=cfg.model.latent_dim, channels=cfg.model.channels,
               res_blocks=cfg.model.res_blocks)


def lr_factor(step: int, total: int, warmup_fraction: float, start_factor: float) -> float:
    """Linear warm-up from ``start_factor`` to 1, then cosine decay to 0 (Huh et al. 2023)."""
    warmup = int(round(total * warmup_fraction))
    if step < warmup:
        return start_factor + (1.0 - start_factor) * step / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def make_optimizer(model: ConvAutoencoder, cfg: DictConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the autoencoder and the quantizer's groups (``lr_scale``, own decay)."""
    lr, wd = cfg.train.lr, cfg.train.weight_decay
    q_params = {id(p) for p in model.quantizer.parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in q_params and p.requires_grad],
               "lr": lr, "weight_decay": wd}]
    for group in model.quantizer.param_groups():
        group = dict(group)
        scale = group.pop("lr_scale", 1.0)
        group.setdefault("weight_decay", wd)
        group["lr"] = lr * scale
        group["params"] = list(group["params"])
        if group["params"]:
            groups.append(group)
    for group in groups:
        group["initial_lr"] = group["lr"]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, weight_decay=wd, fused=fused)


def to_float_images(batch_u8: Tensor, channels_last: bool) -> Tensor:
    x = batch_u8.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def collect_latents(model: ConvAutoencoder, images: Tensor, count: int, generator: torch.Generator,
                    batch_size: int, channels_last: bool) -> Tensor:
    """About ``count`` encoder output vectors from random training images, (N, D)."""
    per_image = (images.shape[-1] // model.downsample) * (images.shape[-2] // model.downsample)
    n_images = min(len(images), max(1, math.ceil(count / per_image)))
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
        sse += (x_hat.float() - x).pow(2).sum(dtype=torch.float64)
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


def write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=2, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def prepare_run_dir(cfg: DictConfig) -> Path:
    name = cfg.name or f"{cfg.quantizer.name}-{cfg.data.name}-{config_hash(cfg)}"
    run_dir = Path(cfg.out).expanduser() / name
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write the run folder {run_dir}: {exc.strerror}; pass --out to a writable folder") from exc
    return run_dir


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    quiet = os.environ.get("VQBENCH_NO_PROGRESS") == "1" or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="step", disable=quiet, dynamic_ncols=True, leave=False)


def fit(config: DictConfig | dict | None = None, *, data: ImageData | None = None,
        log: Callable[[str], None] | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None) -> RunResult:
    """Train one run; returns its summary and per-epoch history and writes its run folder.

    ``config`` may be a resolved DictConfig or a plain dict of overrides (resolved here).
    ``on_epoch(record)`` sees each epoch's metrics (a sweep reports them to Optuna; raising
    stops the run, e.g. for pruning).
    """
    resolved = isinstance(config, DictConfig) and "num_codes" in config.get("quantizer", {})
    cfg = config if resolved else resolve_config(base=config or {})
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    data = data or load_dataset(cfg.data)
    _check_shapes(cfg, data)
    run_dir = prepare_run_dir(cfg)
    OmegaConf.save(cfg, run_dir / "config.yaml")

    model = build_model(cfg).to(device)
    use_cuda = device.type == "cuda"
    channels_last = bool(cfg.train.channels_last and use_cuda)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp = cfg.train.amp if cfg.train.amp != "auto" else ("bf16" if use_cuda else "none")
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")  # noqa: E731

    train_images = data.train.to(device)
    test_images = data.test.to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    batch_size = min(cfg.train.batch_size, len(train_images))
    steps_per_epoch = len(train_images) // batch_size
    total_steps = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    epochs = math.ceil(total_steps / steps_per_epoch)

    if cfg.train.kmeans_init:
        samples = collect_latents(model, train_images, cfg.train.kmeans_samples, generator,
                                  cfg.train.eval_batch_size, channels_last)
        if len(samples) < model.quantizer.num_codes:
            raise UserError(f"k-means needs at least {model.quantizer.num_codes} encoder outputs (one per code) "
                            f"but the training set gives {len(samples)}; lower quantizer.num_codes, "
                            "use more images, or set train.kmeans_init=false")
        model.quantizer.init_codebook(samples, generator=generator)

    optimizer = make_optimizer(model, cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.train.warmup_fraction, cfg.train.warmup_start_factor))
    baseline = mean_image_mse(data.train, data.test)
    history: list[dict[str, Any]] = []
    metrics_path = run_dir / "metrics.jsonl"
    metrics_path.write_text("")
    step, train_seconds, images_seen = 0, 0.0, 0
    started = time.perf_counter()
    model.train()
    bar = _progress(total_steps, f"{cfg.quantizer.name}")
    for epoch in range(epochs):
        order = torch.randperm(len(train_images), generator=generator).to(device)
        loss_sum = torch.zeros((), device=device)
        mse_sum = torch.zeros((), device=device)
        epoch_steps = 0
        t0 = time.perf_counter()
        for b in range(steps_per_epoch):
            if step >= total_steps:
                break
            x = to_float_images(train_images[order[b * batch_size:(b + 1) * batch_size]], channels_last)
            model.quantizer.set_progress(step / max(total_steps - 1, 1))
            with autocast():
                x_hat, out = model(x)
            x_hat = x_hat.float()
            loss = model.quantizer.reconstruction_loss(x, x_hat) + out.loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            scheduler.step()
            model.quantizer.after_optimizer_step()
            loss_sum += loss.detach()
            mse_sum += (x_hat.detach() - x).pow(2).mean()
            epoch_steps += 1
            step += 1
            if step % 10 == 0 or step == total_steps:
                if not math.isfinite(float(loss)):
                    bad = [k for k, v in out.terms.items() if not torch.isfinite(v).all()]
                    raise DivergenceError(f"loss became {float(loss)} at step {step}"
                                          + (f" (non-finite terms: {', '.join(bad)})" if bad else ""))
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss):.4f}")
            bar.update(1)
        if use_cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        images_seen += epoch_steps * batch_size
        if not math.isfinite(float(loss_sum)):
            raise DivergenceError(f"loss became non-finite in epoch {epoch + 1}")
        metrics = evaluate(model, test_images, cfg.train.eval_batch_size, channels_last, autocast)
        record = {"epoch": epoch + 1, "step": step,
                  "train_loss": float(loss_sum) / max(epoch_steps, 1),
                  "train_mse": float(mse_sum) / max(epoch_steps, 1),
                  **metrics, "lr": scheduler.get_last_lr()[0],
                  "images_per_s": epoch_steps * batch_size / max(seconds, 1e-9),
                  **{f"q_{k}": float(v) for k, v in out.terms.items() if v.numel() == 1}}
        history.append(record)
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if on_epoch is not None:
            on_epoch(record)
        log(f"epoch {epoch + 1}/{epochs}  step {step}  loss {record['train_loss']:.5f}  "
            f"test mse {metrics['mse']:.5f}  perplexity {metrics['perplexity']:.1f}  "
            f"codes {metrics['codes_used']}  {record['images_per_s']:.0f} img/s")
        save_checkpoint(run_dir / "checkpoint.pt", {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "step": step,
            "config": OmegaConf.to_container(cfg)})
    bar.close()
    final = history[-1]
    summary = {
        "status": "finished", "run_id": run_dir.name, "run_dir": str(run_dir),
        "config_hash": config_hash(cfg), "quantizer": cfg.quantizer.name, "dataset": cfg.data.name,
        "model": cfg.model.name, "seed": cfg.seed, "epochs": epochs, "steps": step,
        "mse": final["mse"], "perplexity": final["perplexity"],
        "code_perplexity": final["code_perplexity"], "codes_used": final["codes_used"],
        "num_codes": cfg.quantizer.num_codes, "mean_image_mse": baseline,
        "images_per_s": images_seen / max(train_seconds, 1e-9),
        "train_images": len(train_images), "test_images": len(test_images),
        "wall_s": time.perf_counter() - started, "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if use_cuda else "cpu",
        "torch": torch.__version__, "vqbench": __version__,
    }
    write_json_atomic(run_dir / "summary.json", summary)
    if cfg.get("results"):  # one tidy row per finished run (vqbench table / results)
        from .results import append_row

        append_row(cfg.results, cfg, summary)
    return RunResult(run_dir=run_dir, summary=summary, history=history)


def _check_shapes(cfg: DictConfig, data: ImageData) -> None:
    _, h, w = data.image_shape
    stages = {"conv32": 2, "conv128": 3}.get(cfg.model.name)
    expected = cfg.data.image_size
    if (h, w) != (expected, expected) and cfg.data.name != "npz":
        raise UserError(f"dataset {cfg.data.name} gave {h}x{w} images but {expected}x{expected} were expected")
    if stages and (h % 2**stages or w % 2**stages):
        raise UserError(f"model {cfg.model.name} needs image sides divisible by {2**stages}, got {h}x{w}")
