"""Sweeps tune on held-out training images (vqbench/sweep/spec.py, vqbench/data.py): a trial's
objective is its MSE on the last ``data.validation`` of the training images, and the test split
is never read while a sweep runs."""
from __future__ import annotations

import optuna
import pytest
import torch

import vqbench.data as data_module
from tests._sweeps import tiny
from vqbench.data import load_dataset
from vqbench.errors import UserError
from vqbench.sweep import TrialObjective
from vqbench.tokenizer import load_run


class _NoLock:
    def release(self) -> None:
        pass


@pytest.fixture
def reads(monkeypatch):
    """Every (file, array names) the data loaders read."""
    seen: list[tuple[str, tuple[str, ...]]] = []
    real = data_module.read_npz_images

    def spy(path, keys):
        seen.append((str(path), tuple(keys)))
        return real(path, keys)

    monkeypatch.setattr(data_module, "read_npz_images", spy)
    return seen


def test_trial_objective_is_the_validation_mse_and_the_test_split_is_never_read(tmp_path, reads):
    spec = tiny("gamma")
    objective = TrialObjective(spec, "val", tmp_path, 0, 0, _NoLock(), {}, load_dataset, lambda line: None)
    study = optuna.create_study()
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert reads and all(keys == ("x_train",) for _, keys in reads)  # x_test: never asked for
    run = load_run(trial.user_attrs["run_dir"], device="cpu")
    assert run.config.data.validation == 0.1 and run.summary["eval_split"] == "validation"
    assert run.summary["test_images"] == 3 and run.summary["train_images"] == 29  # data.limit=32: 10 % held out
    # The objective is the MSE of exactly those held-out images (the last 3 of the first 32).
    held_out = data_module.read_npz_images(data_module.TINY_CIFAR10, ("x_train",))[29:32]
    x = held_out.float() / 255
    mse = float(((run.reconstruct(held_out) - x) ** 2).mean())
    assert trial.value == pytest.approx(mse, rel=1e-4)
    assert trial.value == run.summary["mse"]


def test_validation_split_is_the_last_training_images_pixel_exact(reads):
    cfg = tiny("gamma").run_config({"quantizer.gamma": 0.01}, ["data.validation=5"])
    data = load_dataset(cfg.data)
    train = data_module.read_npz_images(data_module.TINY_CIFAR10, ("x_train",))[:32]
    assert data.eval_split == "validation" and torch.equal(data.test, train[27:]) and torch.equal(data.train, train[:27])
    assert all(keys == ("x_train",) for _, keys in reads)
    one = load_dataset(tiny("gamma").run_config({"quantizer.gamma": 0.01}, ["data.validation=1"]).data)
    assert torch.equal(one.test, train[31:]) and len(one.train) == 31  # 1 is one image, not 100 %


def test_a_sweep_cannot_be_pointed_at_the_test_split():
    with pytest.raises(UserError, match="would tune on the test split"):
        tiny("gamma").run_config({"quantizer.gamma": 0.01}, ["data.validation=null"])
    cfg = tiny("gamma").run_config({"quantizer.gamma": 0.01}, ["data.validation=40"])  # more than data.limit holds
    with pytest.raises(UserError, match="holds out 40 of the 32 training images"):
        load_dataset(cfg.data)
