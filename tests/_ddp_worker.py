"""One rank of the 2-process gloo job that tests/vqbench/training/test_ddp.py starts with torchrun.

Runs every scenario in one job (process start-up dominates the cost) and saves what each
rank ended with to OUT/<scenario>-rank<r>.pt; the test process compares them. Usage:
``python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests._ddp_worker OUT`` from
the repository root. As a module, not a file: ``python tests/_ddp_worker.py`` would put tests/
first on sys.path, where the test packages tests/vqbench and tests/quantizers would shadow the
real ones.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

import quantizers.functional as Fq
from quantizers.vq import VectorQuantizer
from vqbench.cli import main as cli_main
from vqbench.config import resolve_config
from vqbench.training import Trainer

# Small enough for seconds on 2 shared cores: 64 train images, global batch 16 (8 per rank).
SMALL = ["data.limit=64", "data.test_limit=32", "train.batch_size=16", "train.eval_batch_size=32",
         "model.channels=16", "model.res_blocks=0", "model.latent_dim=8", "quantizer.num_codes=16",
         "train.kmeans_samples=256", "device=cpu"]


class Pruned(Exception):
    """What a sweep's on_epoch raises to stop a trial (optuna.TrialPruned's role)."""


def config(quantizer: str, out: Path, *extra: str):
    return resolve_config(quantizer, "cifar10-tiny", None, [*SMALL, f"out={out}", *extra])


def save(out: Path, name: str, payload) -> None:
    torch.save(payload, out / f"{name}-rank{dist.get_rank()}.pt")


def train(cfg, on_epoch=None) -> Trainer:
    trainer = Trainer(cfg, log=lambda line: None, on_epoch=on_epoch)
    trainer.fit()
    return trainer


def count_replacements(trainer: Trainer) -> list[int]:
    """Wrap the quantizer's replacement to count the rows it rewrites per step."""
    q = trainer.model.quantizer
    counts: list[int] = []
    original = q._replace_dead_codes

    def counted(z):
        before = q.embedding.detach().clone()
        original(z)
        counts.append(int((q.embedding.detach() != before).any(1).sum()))

    q._replace_dead_codes = counted
    return counts


def main(out: Path) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()

    # 1. vqvae: 2 ranks × 8 against 1 process × 16 (the test runs the single process).
    trainer = train(config("vqvae", out / "runs", "train.max_steps=6", "name=vqvae"))
    save(out, "vqvae", {"state": trainer.model.state_dict(), "history": trainer.history})

    # 2. k-means init + dead-code replacement (window 2) + OPT inner step + affine, all at once.
    cfg = config("vqvae-affine-opt", out / "runs", "train.max_steps=8", "quantizer.replace_window=2",
                 "name=replace-opt")
    trainer = Trainer(cfg, log=lambda line: None)
    replaced = count_replacements(trainer)
    trainer.fit()
    save(out, "replace-opt", {"state": trainer.model.state_dict(), "replaced": replaced})

    # 3. GM-VQ, precision calibrated on the first (per-rank) batch, q^B over the global batch.
    gmvq = train(config("gmvq", out / "runs", "train.max_steps=4", "train.kmeans_init=false",
                        "quantizer.aggregate=global", "name=gmvq"))
    save(out, "gmvq", {"state": gmvq.model.state_dict()})

    # 4. The global q^B's KL gradient against one process holding both ranks' rows.
    torch.manual_seed(0)
    weight = torch.randn(8, 16, dtype=torch.float64, requires_grad=True)
    rows = torch.randn(2 * 50, 8, dtype=torch.float64)
    mine = rows[rank * 50:(rank + 1) * 50]
    q_global = Fq.aggregated_posterior(torch.softmax(mine @ weight, -1), global_batch=True)
    Fq.kl_to_uniform(q_global).backward()
    grad = weight.grad.clone()
    dist.all_reduce(grad)
    grad /= dist.get_world_size()  # what DDP does
    weight.grad = None
    q_one = Fq.aggregated_posterior(torch.softmax(rows @ weight, -1))
    Fq.kl_to_uniform(q_one).backward()
    with torch.no_grad():
        kl_local = Fq.kl_to_uniform(Fq.aggregated_posterior(torch.softmax(mine @ weight, -1), global_batch=False))
        kl_global = Fq.kl_to_uniform(q_one)
    save(out, "kl-grad", {"ddp_grad": grad, "one_grad": weight.grad.clone(), "q_global": q_global.detach(),
                          "q_one": q_one.detach(), "kl_local": float(kl_local), "kl_global": float(kl_global)})

    # 5. on_epoch raising (a pruned trial) on rank 0 must stop both ranks, not hang rank 1.
    def prune(record):  # the trial lives on rank 0 only; rank 1 would carry on alone
        if rank == 0:
            raise Pruned(f"pruned at epoch {record['epoch']}")

    try:
        train(config("vqvae", out / "runs", "train.max_steps=12", "name=pruned"), on_epoch=prune)
        outcome = "finished"
    except Pruned as exc:
        outcome = str(exc)
    save(out, "pruned", {"outcome": outcome})

    # 6. The CLI under torchrun: rank 0 writes and reports, the others stay quiet.
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        code = cli_main(["run", "-q", "vqvae-replace", "-d", "cifar10-tiny", "--out", str(out / "runs"), "--json",
                         *SMALL, "train.max_steps=8", "name=cli"])
    save(out, "cli", {"code": code, "stdout": captured.getvalue()})

    # 8. Resume: each rank gets back its own noise stream (not rank 0's) and running sums.
    cfg = config("gmvq", out / "runs", "train.max_steps=3", "train.kmeans_init=false", "name=resume-rng")
    first = train(cfg)
    saved = torch.load(first.run_dir / "checkpoint.pt", weights_only=True)["per_rank"][rank]
    torch.rand(1000)  # move this rank's stream on
    again = Trainer(cfg, log=lambda line: None)
    again.load_checkpoint(first.run_dir / "checkpoint.pt")
    save(out, "resume-rng", {"saved": saved["rng"]["torch"], "restored": torch.get_rng_state()})

    # 7. Inference on rank 0 alone (DDP-wrapped GM-VQ, eval mode) must not communicate (#198).
    if rank == 0:
        metrics = gmvq.evaluate()
        VectorQuantizer(num_codes=8, dim=4, replace_window=2).eval()(torch.randn(10, 4))
        save(out, "solo-eval", metrics)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    # As vqbench/__main__.py does under torchrun: no interpreter teardown after the group is gone.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
