"""Why a VQ-VAE's codebook collapses, step by step (issue 16 (c); docs/reproduction.md).

Trains one run of a suite's recipe (the same schedule: the run is stopped after ``--steps``
optimiser steps, not shortened, so warm-up and cosine are those of the full run) and records,
every few steps, from the quantizer's own training forwards:

- ``batch_codes``: distinct codes the batch's latents are assigned to;
- ``window_codes``: distinct codes assigned over the last ``--every`` steps;
- ``z_rms`` / ``codebook_rms``: the scale of the encoder outputs and of the codebook;
- ``moved_used`` / ``moved_unused``: RMS distance of the codes assigned in the window and of
  the others from where k-means put them (a code no latent picks gets no codebook gradient);
- ``mean_shift``: how far the batch mean of the encoder outputs has moved since step 1, over
  ``z_rms`` (the encoder outputs drifting away from the k-means init);
- ``stranded``: median, over the codes not assigned in the window, of the distance to their
  nearest latent of the batch, over the batch's median quantisation error (> 1: an unused code
  is farther from every latent than a typical latent is from its own code).

    OMP_NUM_THREADS=1 python tools/collapse_trace.py vqvae vqvae-l2-replace --steps 190 \
        --suite table1-cifar10-cpu --out /tmp/collapse --json collapse.jsonl
"""
from __future__ import annotations

import json
import sys
import tempfile

import torch
from einops import rearrange
from omegaconf import DictConfig

from vqbench.errors import OneLineParser, UserError, positive_int, print_error
from vqbench.results.suite import plan_suite
from vqbench.training.trainer import Trainer


class StopTrace(Exception):
    """Raised from the hook once enough steps are traced."""


def trace(cfg: DictConfig, steps: int, every: int) -> list[dict]:
    """The records of one run's first ``steps`` optimiser steps."""
    quantizer = cfg.quantizer.name
    trainer = Trainer(cfg, log=lambda line: None)
    q = trainer.model.quantizer
    state: dict = {"step": 0, "window": torch.zeros(q.num_codes, dtype=torch.bool)}
    records: list[dict] = []

    def hook(module, inputs, output) -> None:
        if not module.training:
            return
        state["step"] += 1
        z = inputs[0].detach().float()  # (B, D, H, W) or (N, D), the Quantizer contract's layouts
        z = rearrange(z, "b d h w -> (b h w) d") if z.dim() == 4 else z
        codebook = q.codebook.detach().float()
        if "init" not in state:
            state["init"], state["mean0"] = codebook.clone(), z.mean(0)
        idx = output.indices.reshape(-1)
        used = torch.bincount(idx, minlength=q.num_codes) > 0
        state["window"] |= used
        if state["step"] % every == 0 or state["step"] == 1:
            window = state["window"]
            moved = (codebook - state["init"]).pow(2).mean(1)
            dist = torch.cdist(codebook, z[torch.randperm(len(z))[:4096]])
            error = (z - codebook[idx]).norm(dim=1).median()
            z_rms = z.pow(2).mean().sqrt()
            records.append({
                "method": quantizer, "step": state["step"], "batch_codes": int(used.sum()),
                "window_codes": int(window.sum()), "z_rms": float(z_rms),
                "codebook_rms": float(codebook.pow(2).mean().sqrt()),
                "moved_used": float(moved[window].mean().sqrt()),
                "moved_unused": float(moved[~window].mean().sqrt()) if (~window).any() else 0.0,
                "mean_shift": float((z.mean(0) - state["mean0"]).norm() / (z_rms * q.dim ** 0.5)),
                "stranded": float(dist[~window].min(1).values.median() / error) if (~window).any() else 0.0,
            })
            print(json.dumps(records[-1]), flush=True)
            state["window"] = torch.zeros(q.num_codes, dtype=torch.bool)
        if state["step"] >= steps:
            raise StopTrace

    q.register_forward_hook(hook)
    try:
        trainer.fit()
    except StopTrace:
        pass
    return records


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="collapse_trace", description=__doc__.splitlines()[0])
    parser.add_argument("quantizers", nargs="+")
    parser.add_argument("--suite", default="table1-cifar10-cpu", help="the recipe (its overrides and tuned values)")
    parser.add_argument("--steps", type=positive_int, default=190)
    parser.add_argument("--every", type=positive_int, default=10)
    parser.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the records here, one per line")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        storage = [f"out={args.out or tmp}", "results=null"]
        try:  # the suite's own runs (recipe, tuned values), seed 0, checked before anything trains
            runs = [run for name in args.quantizers for run in plan_suite(args.suite, storage, [0], [name])]
        except UserError as exc:
            print_error(str(exc), "collapse_trace")
            return 2
        for run in runs:
            rows += trace(run.config, args.steps, args.every)
    if args.json:
        with open(args.json, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
