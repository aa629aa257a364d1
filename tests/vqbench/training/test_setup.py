"""vqbench/training/setup.py, piece by piece with known answers: the device, the seeds, the
model the registry names around the configured quantizer, the shape checks' lines, the step
plan, the quantizer's device check, compile modes and the progress bar's switch."""
from __future__ import annotations

import random
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from vqbench import resolve_config
from vqbench.data import ImageData
from vqbench.errors import UserError
from vqbench.models import Conv32, Conv128, ReferenceConv32
from vqbench.training import compile_model
from vqbench.training.ddp import DistContext
from vqbench.training.setup import (build_model, check_quantizer_device, check_shapes, model_class, progress_bar,
                                    resolve_device, seed_everything, step_plan)


def test_compile_mode_is_checked():
    model = torch.nn.Linear(2, 2)
    assert compile_model(model, "none") is False
    with pytest.raises(UserError) as info:
        compile_model(model, "fast")
    assert str(info.value) == ("train.compile='fast' is not a mode; use one of none, default, reduce-overhead, "
                               "max-autotune, max-autotune-no-cudagraphs")


def test_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError) as info:
        resolve_device("cuda:1")
    assert str(info.value) == "device cuda was asked for but no CUDA GPU is available; use --device cpu or auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda", 1)


def test_seed_everything_seeds_python_numpy_and_torch():
    seed_everything(2**32 + 5)  # numpy takes it modulo 2**32
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2**32 + 5), np.random.seed(5), torch.manual_seed(2**32 + 5)
    assert first == (random.random(), np.random.rand(), torch.rand(1).item())


def test_the_model_the_config_names_around_its_quantizer():
    assert (model_class("conv32"), model_class("conv32-ref"), model_class("conv128")) == (Conv32, ReferenceConv32, Conv128)
    cfg = resolve_config("gmvq", "cifar10-tiny", None, ["model.latent_dim=8", "model.channels=12", "model.res_blocks=1",
                                                        "quantizer.num_codes=24", "quantizer.gamma=0.5"])
    model = build_model(cfg)
    assert type(model) is Conv32 and model.quantizer.num_codes == 24 and model.quantizer.dim == 8
    assert model.quantizer.gamma == 0.5
    assert model.encoder[0].out_channels == 12 and sum(type(m).__name__ == "ResBlock" for m in model.encoder) == 1


def _data(h: int, w: int) -> ImageData:
    images = torch.zeros(2, 3, h, w, dtype=torch.uint8)
    return ImageData(images, images)


def test_shape_checks_are_one_line():
    cfg = resolve_config("vqvae", "cifar10-tiny", None, [])
    check_shapes(cfg, _data(32, 32))
    with pytest.raises(UserError) as info:
        check_shapes(cfg, _data(32, 28))
    assert str(info.value) == "dataset cifar10-tiny gave 32x28 images but 32x32 were expected"
    npz = resolve_config("vqvae", "npz", None, [])  # npz shards may hold any size the model can take
    check_shapes(npz, _data(24, 40))
    with pytest.raises(UserError) as info:
        check_shapes(npz, _data(30, 40))
    assert str(info.value) == "model conv32 needs image sides divisible by 4, got 30x40"
    with pytest.raises(UserError, match="needs image sides divisible by 4, got 24x42"):
        check_shapes(npz, _data(24, 42))
    deep = resolve_config("vqvae", "npz", "conv128", [])
    with pytest.raises(UserError, match="model conv128 needs image sides divisible by 8, got 36x36"):
        check_shapes(deep, _data(36, 36))


def test_step_plan():
    train = OmegaConf.create({"batch_size": 32, "epochs": 3, "max_steps": None})
    assert step_plan(train, 100, DistContext()) == (32, 3, 9, 3)
    assert step_plan(OmegaConf.create({**train, "max_steps": 4}), 100, DistContext()) == (32, 3, 4, 2)
    assert step_plan(OmegaConf.create({**train, "max_steps": 40}), 100, DistContext()) == (32, 3, 9, 3)
    assert step_plan(OmegaConf.create({**train, "batch_size": 500}), 100, DistContext()) == (100, 1, 3, 3)
    assert step_plan(train, 100, DistContext(rank=1, world_size=2)) == (16, 3, 9, 3)  # the global batch halved


def test_a_quantizer_that_refuses_the_device_is_one_line():
    class Picky:
        def check_device(self, device):
            raise ValueError(f"backend=triton needs CUDA, not {device.type}")

    cfg = OmegaConf.create({"quantizer": {"name": "gmvq"}})
    with pytest.raises(UserError) as info:
        check_quantizer_device(cfg, Picky(), torch.device("cpu"))
    assert str(info.value) == "quantizer 'gmvq': backend=triton needs CUDA, not cpu"


def test_the_progress_bar_is_off_unless_stderr_is_a_terminal(monkeypatch):
    monkeypatch.delenv("VQBENCH_NO_PROGRESS", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress_bar(10, "train", unit="img")
    assert not bar.disable and bar.total == 10 and bar.desc == "train" and bar.unit == "img"
    bar.close()
    monkeypatch.setenv("VQBENCH_NO_PROGRESS", "1")
    assert progress_bar(10, "train").disable
    monkeypatch.delenv("VQBENCH_NO_PROGRESS")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert progress_bar(10, "train").disable


@pytest.mark.parametrize("mode, passed, graphs", [("default", None, False), ("max-autotune", "max-autotune", True),
                                                  ("reduce-overhead", "reduce-overhead", True),
                                                  ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs", False)])
def test_compile_hands_inductor_its_mode_static_shapes_and_the_workaround(mode, passed, graphs, monkeypatch):
    import torch._inductor.config as inductor

    calls = []

    class Recorder(torch.nn.Module):
        def compile(self, **kwargs):
            calls.append(kwargs)

    if hasattr(inductor.triton, "mix_order_reduction"):
        monkeypatch.setattr(inductor.triton, "mix_order_reduction", True)
    assert compile_model(Recorder(), mode) is graphs
    assert calls == [{"mode": passed, "dynamic": False}]
    if hasattr(inductor.triton, "mix_order_reduction"):
        assert inductor.triton.mix_order_reduction is False
    assert compile_model(Recorder(), "none") is False and len(calls) == 1  # none compiles nothing


def test_the_progress_bar_counts_steps_by_default(monkeypatch):
    monkeypatch.delenv("VQBENCH_NO_PROGRESS", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress_bar(3, "x")
    assert bar.unit == "step"
    bar.close()
