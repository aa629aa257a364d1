"""vqbench/training/optim.py: the learning-rate schedule."""
from __future__ import annotations

import pytest

from vqbench.training import lr_factor


def test_lr_schedule_warms_up_from_a_fifth_then_decays_to_zero():
    assert lr_factor(0, 100, 0.1, 0.2) == pytest.approx(0.2)
    assert lr_factor(10, 100, 0.1, 0.2) == pytest.approx(1.0)
    assert lr_factor(55, 100, 0.1, 0.2) == pytest.approx(0.5)
    assert lr_factor(100, 100, 0.1, 0.2) == pytest.approx(0.0, abs=1e-12)


def test_lr_schedule_edges():
    assert lr_factor(1, 1, 0.0, 0.2) == pytest.approx(0.0, abs=1e-12)  # no warm-up, one step: cosine ends at 0
    assert lr_factor(5, 10, 0.5, 0.2) == pytest.approx(1.0)  # the warm-up's last step meets the cosine's first
    assert lr_factor(0, 10, 0.0, 0.2) == 1.0  # no warm-up: the first step at the full rate


def test_captured_step_reads_its_learning_rates_from_tensors_the_scheduler_fills():
    import torch

    from vqbench.config import resolve_config
    from vqbench.training import build_model
    from vqbench.training.optim import make_optimizer, make_scheduler

    cfg = resolve_config("gmvq", "cifar10-tiny", overrides=["quantizer.num_codes=16", "model.channels=8",
                                                             "model.res_blocks=0", "model.latent_dim=8"])
    cfg.train.cuda_graph = True  # what make_optimizer does for a graph; the CPU run itself refuses it earlier
    optimizer = make_optimizer(build_model(cfg), cfg, torch.device("cpu"))
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert all(isinstance(lr, torch.Tensor) and lr.dtype == torch.float32 and lr.dim() == 0 for lr in lrs)
    assert [float(lr) for lr in lrs] == pytest.approx([0.01, 0.01, 0.001])  # model, codebook, head at 0.1
    assert all(g["capturable"] is False and g["initial_lr"] == pytest.approx(float(g["lr"]))
               for g in optimizer.param_groups)
    scheduler = make_scheduler(optimizer, 10, cfg.train)
    optimizer.step()  # no gradients: moves nothing
    scheduler.step()
    factor = lr_factor(1, 10, cfg.train.warmup_fraction, cfg.train.warmup_start_factor)
    assert all(g["lr"] is lr for g, lr in zip(optimizer.param_groups, lrs))  # filled in place
    assert [float(g["lr"]) for g in optimizer.param_groups] == pytest.approx([0.01 * factor, 0.01 * factor, 0.001 * factor])


def test_quantizer_param_groups_take_any_iterable_drop_empty_groups_and_scale_lr():
    import torch

    from vqbench.training.optim import quantizer_param_groups

    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))

    class Stub:
        def param_groups(self):
            return [{"params": (p for p in [a])}, {"params": iter([]), "lr_scale": 3.0},
                    {"params": (p for p in [b]), "lr_scale": 0.5, "weight_decay": 0.0}]

    groups = quantizer_param_groups(Stub(), lr=0.1, weight_decay=0.2)
    assert [g["params"] for g in groups] == [[a], [b]]
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(0.1, 0.2), (0.05, 0.0)]
    assert all("lr_scale" not in g for g in groups)
