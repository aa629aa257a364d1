"""What a CelebA step costs against a CIFAR-10 one, to size ``table1-celeba-cpu`` (issue 16).

    OMP_NUM_THREADS=1 python benchmarks/celeba_step_cost.py            # vqvae and gmvq
    OMP_NUM_THREADS=1 python benchmarks/celeba_step_cost.py sqvae

One training step (forward, the reconstruction MSE plus the quantizer's loss, backward,
AdamW) of a batch of 64 random images, for each (autoencoder, image size) a CelebA protocol
could take, as a ratio to the anchor: the CIFAR-10 table's conv32-ref at 32x32, timed in the
same process just before (the machine is shared; ratios survive its load, times do not).
Per image, a ratio r means a CelebA run costs r CIFAR-10 images of training.
"""
from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

from vqbench import UserError
from vqbench.config import resolve_config
from vqbench.training.setup import build_model

CASES = [("npz", "conv32-ref", 32), ("celeba", "conv32-ref", 64), ("celeba", "conv128", 64),
         ("celeba", "conv128", 128)]


def seconds_per_step(quantizer: str, dataset: str, model: str, size: int, repeats: int = 3) -> float:
    torch.manual_seed(0)
    net = build_model(resolve_config(quantizer, dataset, model, ["device=cpu"]))
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
    x = torch.rand(64, 3, size, size)

    def step() -> None:
        recon, out = net(x)
        loss = F.mse_loss(recon, x) + out.loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    step()  # warm-up: the first call pays for allocations
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main(quantizers: list[str]) -> None:
    torch.set_num_threads(1)
    for quantizer in quantizers:
        anchor = None
        for dataset, model, size in CASES:
            seconds = seconds_per_step(quantizer, dataset, model, size)
            anchor = anchor or seconds
            print(f"{quantizer:8s} {model:10s} {size:4d}px  {seconds * 1000:7.0f} ms/step of 64  "
                  f"x{seconds / anchor:5.1f} of conv32-ref at 32px", flush=True)


if __name__ == "__main__":
    try:
        main(sys.argv[1:] or ["vqvae", "gmvq"])
    except UserError as exc:  # an unknown quantizer name: one line, exit 2
        print(f"celeba_step_cost: {exc}", file=sys.stderr)
        sys.exit(2)
