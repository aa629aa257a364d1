"""vqbench/config.py: defaults, registry and overrides layered; every bad override one clear
error; the config hash that names a run (performance options keep it)."""
from __future__ import annotations

import pytest

from vqbench import UserError, build_quantizer, resolve_config
from vqbench.config import config_hash


def test_config_layers_defaults_registry_and_overrides():
    cfg = resolve_config("gmvq-entropy", "cifar10-tiny", None, ["quantizer.gamma=0.5", "seed=3"])
    assert cfg.quantizer.beta == 2.0  # registry default of gmvq-entropy
    assert cfg.quantizer.gamma == 0.5 and cfg.seed == 3
    assert cfg.quantizer.dim == cfg.model.latent_dim == 64 and cfg.quantizer.num_codes == 1024
    assert cfg.model.name == "conv32" and cfg.train.lr == 0.01
    assert cfg.train.batch_size == 64  # the tiny dataset's own recipe...
    assert resolve_config("gmvq", "cifar10-tiny", None, ["train.batch_size=8"]).train.batch_size == 8  # ...under the user's


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown config key 'train.epoch'.*did you mean 'epochs'"),
    ("train.epochs=three", "train.epochs must be a whole number, got .three."),
    ("train.batch_size=0", "train.batch_size must be ≥ 1"),
    ("quantizer.gamma=-1", "gamma must be a finite number ≥ 0"),
    ("quantizer.tau_start=0", "tau_start must be a finite number > 0"),
    ("quantizer.num_codes=0", "num_codes must be a whole number ≥ 1"),
    ("epochs", "not KEY=VALUE"),
])
def test_bad_overrides_are_one_clear_error(override, message):
    with pytest.raises(UserError, match=message):
        cfg = resolve_config("gmvq", "cifar10-tiny", None, [override])
        build_quantizer(cfg.quantizer.name, **{k: v for k, v in cfg.quantizer.items() if k != "name"})


def test_unknown_dataset_and_model():
    with pytest.raises(UserError, match="did you mean 'cifar10'"):
        resolve_config("gmvq", "cifar1O")
    with pytest.raises(UserError, match="unknown model 'conv64'"):
        resolve_config("gmvq", "cifar10-tiny", "conv64")


def test_performance_options_keep_the_config_hash():
    base = resolve_config("gmvq", "cifar10-tiny", None, [])
    same = resolve_config("gmvq", "cifar10-tiny", None, ["train.cuda_graph=true", "train.matmul_precision=highest"])
    tf32 = resolve_config("gmvq", "cifar10-tiny", None, ["train.matmul_precision=high"])
    assert config_hash(base) == config_hash(same)  # the same function, replayed
    assert config_hash(base) != config_hash(tf32)  # TF32 changes the numbers


def test_an_auto_or_number_option_takes_a_number_and_a_keyword_option_refuses_one():
    from vqbench.registry import build_quantizer

    cfg = resolve_config("gmvq", "cifar10-tiny", overrides=["quantizer.precision_init=1.0"])
    assert cfg.quantizer.precision_init == 1.0  # the paper-literal ŵ = softplus(r̂) (issue 16 compares it)
    assert resolve_config("sqvae", "cifar10-tiny", overrides=["quantizer.log_var_init=3"]).quantizer.log_var_init == 3
    with pytest.raises(UserError, match="latreg"):
        build_quantizer("gmvq", num_codes=8, dim=4, latreg=3)
