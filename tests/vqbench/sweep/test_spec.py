"""vqbench/sweep/spec.py: the shipped sweep files load and resolve; a malformed one names the
key and the file."""
from __future__ import annotations

import pytest

from vqbench.errors import UserError
from vqbench.sweep import available_sweeps, load_sweep


def test_shipped_sweeps_load_and_resolve():
    assert {"gamma", "beta", "gamma-beta"} <= set(available_sweeps())
    gamma, beta, both = load_sweep("gamma"), load_sweep("beta"), load_sweep("gamma-beta")
    assert [p.key for p in gamma.searched] == ["quantizer.gamma"] and gamma.base_config().quantizer.beta == 1.0
    assert [p.key for p in beta.searched] == ["quantizer.beta"] and beta.searched[0].low >= 1.0
    assert beta.base_config().quantizer.gamma == 0.01  # fixed
    assert both.directions == ["minimize", "maximize"] and both.pruner is None
    cfg = gamma.with_base("cifar10-tiny", ["train.max_steps=7"]).run_config({"quantizer.gamma": 1e-5})
    assert (cfg.data.name, cfg.train.max_steps, cfg.quantizer.gamma) == ("cifar10-tiny", 7, 1e-5)
    # issue 16's protocol sweeps: a grid of five on the CPU recipe, scored on held-out training images
    for name in ("gamma-cifar10-cpu", "beta-cifar10-cpu", "commitment-cifar10-cpu"):
        spec = load_sweep(name)
        cfg = spec.base_config()
        assert spec.sampler["name"] == "grid" and spec.n_trials == 5
        assert (cfg.data.validation, cfg.train.epochs, cfg.train.batch_size) == (0.1, 4, 256)
    assert load_sweep("gamma-cifar10-cpu").base_config().quantizer.beta == 1.0
    # the precision ablation's "auto" point is gamma-cifar10-cpu's trial at 1e-4: the same run
    # but for precision_init, so only the paper-literal value is trained
    precision = load_sweep("precision-cifar10-cpu")
    literal = precision.run_config({"quantizer.precision_init": 1.0})
    auto_point = load_sweep("gamma-cifar10-cpu").run_config({"quantizer.gamma": 0.0001})
    assert (literal.quantizer.precision_init, auto_point.quantizer.precision_init) == (1.0, "auto")
    literal.quantizer.precision_init = "auto"
    assert literal == auto_point


@pytest.mark.parametrize("text, message", [
    ("base: {quantizer: gmvq}\nspace: {quantizer.gamma: {low: 1, high: 0.1}}\nobjectives: [{metric: mse, direction: minimize}]",
     "space.quantizer.gamma: low (1) must be below high (0.1)"),
    ("base: {quantizer: gmvq}\nspace: {quantizer.gamma: {low: 0, high: 1, log: true}}\nobjectives: [{metric: mse, direction: minimize}]",
     "space.quantizer.gamma.low: must be > 0 on a log scale"),
    ("base: {quantizer: gmvq}\nspace: {quantizer.gamma: {low: 0.1, high: 1}}\nobjective: []",
     "objective: unknown key; did you mean 'objectives'?"),
    ("base: {quantizer: gmvq}\nspace: {quantizer.gamma: {low: 0.1, high: 1}}\nobjectives: [{metric: msee, direction: minimize}]",
     "objectives[0].metric: unknown metric 'msee'; did you mean 'mse'?"),
    ("base: {quantizer: gmvq}\nspace: {quantizer.gamma: {low: 0.1, high: 1}}\nobjectives: [{metric: mse, direction: minimize}, "
     "{metric: perplexity, direction: maximize}]\npruner: {name: median}", "pruner: Optuna cannot prune a multi-objective"),
    ("base: {quantizer: gmvq}\nspace: [1, 2]\nobjectives: [{metric: mse, direction: minimize}]", "space: must map config keys"),
    ("base: {quantizer: gmvq}\nspace: {quantizer.gamma: {low: 0.1, high: 1}}\nobjectives: [{metric: mse, direction: minimize}]\n"
     "sampler: {name: tpee}", "sampler.name: unknown sampler 'tpee'; did you mean 'tpe'?"),
    ("base: {quantizer: gmvq}\nspace: {quantizer.gamma: {low: 0.1, high: 1}}\nobjectives: [{metric: mse, direction: minimize}]\n"
     "sampler: {name: grid}", "sampler: grid searches choices only"),
    ("base: {quantizer: gmvq}\nspace: {quantizer.gamma: {choices: [0.1, 1]}}\nobjectives: [{metric: mse, direction: minimize}]\n"
     "sampler: {name: grid}\nn_trials: 3", "n_trials: is 3 but the grid has 2 points; give at most 2"),
])
def test_malformed_sweep_file_names_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=None) as info:
        load_sweep(path)
    assert message in str(info.value) and str(path) in str(info.value)
