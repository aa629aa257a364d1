"""The whole-step CUDA graph (``train.cuda_graph``, vqbench/training/graph.py) on the CPU.

CI has no GPU, so the graph itself is replaced by an eager stand-in with the same contract
(capture records without running, replay runs the recorded step on the static index buffer,
and the captured backward writes fresh gradients). What is tested is everything around it:
the side-stream warm-up steps, the static buffers, the lr tensors the scheduler fills in
place, τ's schedule applied outside the graph, the stacked scalars, and that the steps are
the same optimisation as the plain path's. ``benchmarks/gpu_check.sh`` runs the real graph.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vqbench.config import resolve_config
from vqbench.errors import UserError
from vqbench.registry import build_quantizer
from vqbench.training import Trainer
from vqbench.training.graph import EAGER_STEPS, GraphedStep, check_cuda_graph
from vqbench.training import lrs_as_tensors


class EagerGraph:
    """Stands in for CudaGraphBackend: capture records ``body`` without running it."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer, self.body, self.out, self.replays, self.warm_ups = optimizer, None, None, 0, 0

    def warm_up(self, body):
        self.warm_ups += 1
        return body()

    def capture(self, body):
        self.body, self.out = body, torch.empty(0)
        return self.out

    def replay(self):
        self.replays += 1
        self.optimizer.zero_grad(set_to_none=True)  # a captured backward writes, never accumulates
        out = self.body()
        self.out.resize_(out.shape).copy_(out)


def make_trainer(tmp_path, quantizer: str = "gmvq") -> Trainer:
    cfg = resolve_config(quantizer, "cifar10-tiny", None, [
        "device=cpu", "train.batch_size=16", "train.kmeans_init=false", "quantizer.num_codes=32",
        "model.channels=8", "model.res_blocks=1", "train.max_steps=20", f"out={tmp_path}"])
    trainer = Trainer(cfg, log=lambda line: None)
    trainer.setup_optimization()
    return trainer


@pytest.mark.parametrize("quantizer", ["gmvq", "sqvae"])
def test_graphed_steps_are_the_plain_steps(tmp_path, quantizer):
    order = torch.randperm(320, generator=torch.Generator().manual_seed(3))
    steps = EAGER_STEPS + 4

    def run(trainer):  # one after the other: each Trainer seeds the global RNG it draws noise from
        out = []
        for step in range(steps):
            out.append(trainer.step_batch(order[step * 16:(step + 1) * 16]))
            trainer.step += 1
        return out

    plain = make_trainer(tmp_path / "a", quantizer)
    expected = run(plain)
    graphed = make_trainer(tmp_path / "b", quantizer)
    lrs_as_tensors(graphed.optimizer, graphed.device)
    backend = EagerGraph(graphed.optimizer)
    graphed.graphed_step = GraphedStep(graphed.stepper, backend=backend)
    for step, ((la, ma, ta), (lb, mb, tb)) in enumerate(zip(expected, run(graphed))):
        # lr as an fp32 tensor vs a Python float: AdamW rounds differently in the last bits.
        assert torch.allclose(la, lb, rtol=1e-4), (step, float(la), float(lb))
        assert torch.allclose(ma, mb, rtol=1e-4)
        assert set(tb) == {k for k, v in ta.items() if v.numel() == 1}
        for k in tb:
            assert torch.allclose(ta[k].float(), tb[k], rtol=1e-4, atol=1e-7), k
    assert backend.warm_ups == EAGER_STEPS and backend.replays == steps - EAGER_STEPS
    # The schedule reached the captured step through the same tensors.
    assert all(isinstance(g["lr"], torch.Tensor) for g in graphed.optimizer.param_groups)
    assert graphed.optimizer.param_groups[0]["lr"] is graphed.graphed_step.lrs[0]
    assert float(graphed.optimizer.param_groups[0]["lr"]) == pytest.approx(plain.scheduler.get_last_lr()[0], rel=1e-6)
    for (name, p), q in zip(plain.model.named_parameters(), graphed.model.parameters()):
        assert torch.allclose(p, q, rtol=1e-3, atol=1e-6), name


@pytest.mark.parametrize("as_tensors", [True, False])
def test_the_captured_lr_follows_any_scheduler(tmp_path, as_tensors):
    """A scheduler that assigns a new lr (a float, or a new tensor) instead of filling the
    captured tensor in place: the value is copied into the tensor the graph reads."""
    trainer = make_trainer(tmp_path)
    if as_tensors:
        lrs_as_tensors(trainer.optimizer, trainer.device)
    trainer.graphed_step = GraphedStep(trainer.stepper, backend=EagerGraph(trainer.optimizer))
    idx = torch.arange(16)
    for _ in range(EAGER_STEPS + 1):  # capture converts float lrs to tensors
        trainer.step_batch(idx)
    captured = trainer.graphed_step.lrs[0]
    assert trainer.optimizer.param_groups[0]["lr"] is captured
    trainer.scheduler.step = lambda: trainer.optimizer.param_groups[0].__setitem__("lr", 0.125)
    trainer.step_batch(idx)
    assert trainer.optimizer.param_groups[0]["lr"] is captured and float(captured) == 0.125


def test_settings_a_graph_cannot_honour_are_one_line_errors():
    def cfg(name="gmvq", **train):
        return SimpleNamespace(train=SimpleNamespace(**{"cuda_graph": True, "compile": "default", **train}),
                               quantizer=SimpleNamespace(name=name))
    cuda, gmvq = torch.device("cuda"), build_quantizer("gmvq")
    check_cuda_graph(cfg(cuda_graph=False), torch.device("cpu"), True, gmvq)  # off: nothing to check
    with pytest.raises(UserError, match="needs a CUDA device"):
        check_cuda_graph(cfg(), torch.device("cpu"), False, gmvq)
    with pytest.raises(UserError, match="would nest CUDA graphs"):
        check_cuda_graph(cfg(compile="reduce-overhead"), cuda, False, gmvq)
    with pytest.raises(UserError, match="one process"):
        check_cuda_graph(cfg(), cuda, True, gmvq)
    with pytest.raises(UserError, match="'vqvae-replace' cannot be replayed"):
        check_cuda_graph(cfg("vqvae-replace"), cuda, False, build_quantizer("vqvae-replace"))
    check_cuda_graph(cfg(compile="max-autotune-no-cudagraphs"), cuda, False, gmvq)


@pytest.mark.parametrize("name, safe", [("gmvq", True), ("gmvq-bound", True), ("vqvae", True), ("vqvae-l2", True),
                                        ("vqvae-affine", True), ("sqvae", True), ("gumbel-vqvae", True),
                                        ("vqvae-replace", False), ("vqvae-opt", False), ("vqvae-affine-opt", False)])
def test_which_quantizers_declare_themselves_graph_safe(name, safe):
    assert build_quantizer(name).cuda_graph_safe is safe
