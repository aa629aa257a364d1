"""Run folders for the tokenizer's tests: a really trained tiny run (2 optimiser steps of a
narrow conv32 on 64 cifar10-tiny images) or, faster, an untrained one written as a run is."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from vqbench.config import config_hash, resolve_config
from vqbench.training import build_model

# 16 codes: a perfect square (rvq, lucid-rvq), a power of two (lfq, bsq), FSQ levels [4, 4].
TINY_MODEL = ["quantizer.num_codes=16", "model.channels=8", "model.res_blocks=0", "model.latent_dim=8"]
TINY_RUN = [*TINY_MODEL, "train.batch_size=32", "train.eval_batch_size=32", "train.kmeans_samples=256",
            "data.limit=64", "data.test_limit=32", "device=cpu"]


def train_tiny(out: Path, quantizer: str = "vqvae", steps: int = 2, *extra: str) -> Path:
    """Train a tiny run under ``out`` (no result rows) and return its folder."""
    from vqbench.training import fit

    cfg = resolve_config(quantizer, "cifar10-tiny", overrides=[*TINY_RUN, f"train.max_steps={steps}",
                                                                f"out={out}", "results=null", *extra])
    return fit(cfg).run_dir


def fake_run(out: Path, quantizer: str = "vqvae", *extra: str) -> Path:
    """A run folder as a run writes it (config.yaml, checkpoint.pt) around an untrained model."""
    cfg = resolve_config(quantizer, "cifar10-tiny", overrides=[*TINY_RUN, f"out={out}", *extra])
    torch.manual_seed(0)
    model = build_model(cfg)
    run_dir = Path(out) / f"{quantizer}-fake"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    torch.save({"model": model.state_dict(), "step": 0, "config_hash": config_hash(cfg)}, run_dir / "checkpoint.pt")
    return run_dir


def listing(root: Path) -> set[str]:
    """Every path under ``root``, to show that a refused command wrote nothing."""
    return {str(p.relative_to(root)) for p in Path(root).rglob("*")}
