"""vqbench/training/step.py: one optimiser step with known answers: τ follows its schedule to
``tau_end`` at the last step, every group's learning rate (GM-VQ's head at ``head_lr_scale``)
follows the warm-up/cosine factor, and gradient clipping caps the gradient norm."""
from __future__ import annotations

import math

import pytest
import torch

from vqbench.config import resolve_config
from vqbench.data import load_cifar10_tiny, to_float_images
from vqbench.training import build_model, lr_factor
from vqbench.training.optim import make_optimizer, make_scheduler
from vqbench.training.step import TrainStep, make_autocast

TINY = ["quantizer.num_codes=16", "model.channels=8", "model.res_blocks=0", "model.latent_dim=8",
        "train.lr=0.01", "train.warmup_fraction=0.5"]


def stepper(name: str, total: int, *extra: str) -> tuple[TrainStep, torch.Tensor]:
    cfg = resolve_config(name, "cifar10-tiny", overrides=[*TINY, *extra])
    torch.manual_seed(0)
    model = build_model(cfg)
    images = load_cifar10_tiny(None).train[:16]
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    scheduler = make_scheduler(optimizer, total, cfg.train)
    step = TrainStep(model, optimizer, scheduler, images, total, make_autocast(torch.device("cpu"), "none", False),
                     grad_clip=cfg.train.grad_clip)
    return step, to_float_images(images, False)


def test_tau_follows_its_schedule_and_reaches_tau_end_at_the_last_step():
    total = 4
    step, x = stepper("gumbel-vqvae", total)
    q = step.model.quantizer
    seen = []
    for number in range(total):
        _, _, terms = step(x, number)
        seen.append(float(terms["tau"]))
    expected = [2.0 * (0.1 / 2.0) ** (n / (total - 1)) for n in range(total)]
    assert seen == pytest.approx(expected, rel=1e-6)
    assert float(q.tau) == pytest.approx(q.tau_end, rel=1e-6)


def test_learning_rates_and_head_lr_scale_after_k_steps():
    total, k = 6, 2
    step, x = stepper("gmvq", total)
    q = step.model.quantizer
    groups = step.optimizer.param_groups
    head = [g for g in groups if any(p is next(q.weight_head.parameters()) for p in g["params"])]
    assert len(head) == 1 and q.head_lr_scale == 0.1
    assert head[0]["lr"] == pytest.approx(0.01 * 0.1 * lr_factor(0, total, 0.5, 0.2))
    for number in range(k):
        step(x, number)
    factor = lr_factor(k, total, 0.5, 0.2)
    assert 0.2 < factor < 1.0
    assert head[0]["lr"] == pytest.approx(0.01 * 0.1 * factor)
    others = [g for g in groups if g is not head[0]]
    assert others and all(g["lr"] == pytest.approx(0.01 * factor) for g in others)


@pytest.mark.parametrize("clip", [1e-3, None])
def test_gradient_clipping_caps_the_total_gradient_norm(clip):
    step, x = stepper("vqvae", 2, f"train.grad_clip={clip if clip else 'null'}")
    step(x, 0)
    norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in step.model.parameters() if p.grad is not None))
    if clip:
        assert norm == pytest.approx(clip, rel=1e-4)  # the raw norm is far above 1e-3
    else:
        assert norm > 1e-2


@pytest.mark.parametrize("device, amp, graph, enabled, dtype", [
    ("cpu", "auto", False, False, torch.float32), ("cpu", "none", False, False, torch.float32),
    ("cpu", "bf16", False, True, torch.bfloat16), ("cuda", "auto", True, True, torch.bfloat16),
    ("cuda", "none", False, False, torch.float32),
])
def test_autocast_factory(device, amp, graph, enabled, dtype):
    factory = make_autocast(torch.device(device), amp, graph)
    assert factory.func is torch.autocast and factory.args == (device,)
    assert factory.keywords == {"dtype": dtype, "enabled": enabled, "cache_enabled": not graph}


def test_check_finite_names_the_first_bad_step_and_its_terms():
    from vqbench.training.step import DivergenceError

    step, x = stepper("vqvae", 2)
    ok = {"commitment": torch.tensor(1.0)}
    window = [(3, torch.tensor(0.5), ok), (4, torch.tensor(float("nan")), {"commitment": torch.tensor(float("inf")),
                                                                           "codebook": torch.tensor(1.0)}),
              (5, torch.tensor(float("inf")), ok)]
    with pytest.raises(DivergenceError, match=r"^loss became nan at step 4 \(non-finite terms: commitment\)$") as err:
        step.check_finite(window)
    assert (err.value.step, err.value.terms, err.value.summary) == (4, ["commitment"], None)
    assert math.isnan(err.value.loss)
    with pytest.raises(DivergenceError, match=r"^loss became inf at step 5 \(all loss terms finite\)$"):
        step.check_finite([(5, torch.tensor(float("inf")), ok)])
    window = [(3, torch.tensor(0.5), ok)]
    step.check_finite(window)
    assert window == []
    step.check_finite([])
    picked = step.batch(torch.tensor([3, 0]))
    torch.testing.assert_close(picked, x[[3, 0]])
