"""The foundation: registry, configuration, data, runner and CLI, end to end on real data."""
from __future__ import annotations

import json
import math

import pytest
import torch

from quantizers import Quantizer, QuantizerOutput
from vqbench import UserError, build_quantizer, fit, list_quantizers, register_quantizer, resolve_config
from vqbench.data import load_dataset
from vqbench.registry import get_quantizer_entry
from vqbench.training import lr_factor, steady_throughput

from conftest import fast_overrides, run_cli, shared_data_or_skip

TABLE1 = ["vqvae", "vqvae-l2", "vqvae-replace", "vqvae-l2-replace", "vqvae-affine", "vqvae-opt",
          "vqvae-affine-opt", "sqvae", "gumbel-vqvae", "gmvq", "gmvq-entropy"]


def tiny_overrides(tmp_path, steps: int = 10, **extra) -> list[str]:
    return fast_overrides(tmp_path, steps, **extra)


# --- registry -----------------------------------------------------------------------

def test_every_table1_method_is_registered_with_citation_and_paper_numbers():
    names = list_quantizers()
    for name in TABLE1:
        assert name in names
        entry = get_quantizer_entry(name)
        assert entry.citation and entry.table1_row
        for dataset in ("cifar10", "celeba"):
            assert entry.paper[dataset]["mse_e3"] > 0 and entry.paper[dataset]["perplexity"] >= 1


def test_list_quantizers_wildcard():
    assert set(list_quantizers("gmvq*")) == {"gmvq", "gmvq-bound", "gmvq-entropy"}
    assert set(list_quantizers("vqvae-l2*")) == {"vqvae-l2", "vqvae-l2-replace", "vqvae-l2-rotation"}


def test_unknown_name_suggests_close_match():
    with pytest.raises(UserError, match="did you mean 'gmvq'"):
        build_quantizer("gmvqq")


def test_unknown_keyword_names_the_valid_ones():
    with pytest.raises(UserError, match="no option 'gama'.*gamma"):
        build_quantizer("gmvq", gama=1.0)


def test_wrong_type_and_bad_value_are_clear():
    with pytest.raises(UserError, match="gamma must be a float"):
        build_quantizer("gmvq", gamma="big")
    with pytest.raises(UserError, match="gamma must be a finite number ≥ 0"):
        build_quantizer("gmvq", gamma=-1.0)
    with pytest.raises(UserError, match="num_codes must be a whole number ≥ 1"):
        build_quantizer("vqvae", num_codes=0)


def test_decorator_registers_and_builds():
    @register_quantizer("test-identity-vq")
    class Identity(Quantizer):
        """A test quantizer that passes vectors through."""

        def __init__(self, num_codes: int = 4, dim: int = 2) -> None:
            super().__init__(num_codes, dim)
            self.embedding = torch.nn.Parameter(torch.zeros(num_codes, dim))

        @property
        def codebook(self):
            return self.embedding

        def quantize(self, z):
            return QuantizerOutput(z_q=z, loss=z.new_zeros(()), indices=z.new_zeros(len(z), dtype=torch.long))

    q = build_quantizer("test-identity-vq", dim=3)
    assert isinstance(q, Identity) and q.dim == 3
    assert "test-identity-vq" in list_quantizers("test-*")
    with pytest.raises(UserError, match="registered twice"):
        register_quantizer("test-identity-vq")(type("Other", (Identity,), {}))


# --- configuration --------------------------------------------------------------------

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


def test_lr_schedule_warms_up_from_a_fifth_then_decays_to_zero():
    assert lr_factor(0, 100, 0.1, 0.2) == pytest.approx(0.2)
    assert lr_factor(10, 100, 0.1, 0.2) == pytest.approx(1.0)
    assert lr_factor(55, 100, 0.1, 0.2) == pytest.approx(0.5)
    assert lr_factor(100, 100, 0.1, 0.2) == pytest.approx(0.0, abs=1e-12)


def test_steady_throughput_leaves_out_the_first_epoch():
    # Epoch 1 (compile, capture) at 100 img/s; epochs 2–3: 10 steps of 32 images at 400 and 200 img/s.
    history = [{"step": 10, "images_per_s": 100.0}, {"step": 20, "images_per_s": 400.0},
               {"step": 30, "images_per_s": 200.0}]
    assert steady_throughput(history, 32) == pytest.approx(640 / (320 / 400 + 320 / 200))
    assert steady_throughput(history[:1], 32) is None


# --- data -----------------------------------------------------------------------------

def test_tiny_cifar10_is_real_balanced_uint8():
    data = load_dataset(resolve_config("vqvae", "cifar10-tiny").data)
    assert data.train.shape == (320, 3, 32, 32) and data.test.shape == (160, 3, 32, 32)
    assert data.train.dtype == torch.uint8 and data.train.float().std() > 40


def test_npz_shards_from_shared_data():
    path = shared_data_or_skip("cifar10", "test.npz")
    cfg = resolve_config("vqvae", "npz", None, [f"data.train={path}", f"data.test={path}", "data.limit=100"])
    data = load_dataset(cfg.data)
    assert data.train.shape == (100, 3, 32, 32) and data.test.shape == (10000, 3, 32, 32)


def test_celeba_folder_center_crops_to_128():
    folder = shared_data_or_skip("celeba", "img_align_celeba_half")
    cfg = resolve_config("vqvae", "celeba", None, [f"data.root={folder}", "data.limit=4", "data.test_limit=2"])
    data = load_dataset(cfg.data)
    assert data.train.shape == (4, 3, 128, 128) and data.test.shape == (2, 3, 128, 128)


def test_cifar10_without_download_says_how_to_fix(tmp_path):
    cfg = resolve_config("vqvae", "cifar10", None, [f"data.root={tmp_path}", "data.download=false"])
    with pytest.raises(UserError, match="data.download=true"):
        load_dataset(cfg.data)


# --- the runner -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gmvq", "vqvae"])
def test_fit_end_to_end_on_tiny_cifar10(tmp_path, name):
    cfg = resolve_config(name, "cifar10-tiny", None, tiny_overrides(tmp_path, steps=40, **{"train.epochs": 4}))
    result = fit(cfg, log=lambda line: None)
    s = result.summary
    history = result.history
    assert len(history) == 4 and s["steps"] == 40
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert math.isfinite(s["mse"]) and math.isfinite(s["mean_image_mse"])
    assert 1.0 <= s["perplexity"] <= 128 and 1.0 <= s["code_perplexity"] <= 128
    assert 1 <= s["codes_used"] <= 128
    run_dir = result.run_dir
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json", "checkpoint.pt"}
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4
    assert json.loads((run_dir / "summary.json").read_text())["mse"] == s["mse"]
    assert s["steady_images_per_s"] > 0


def test_same_seed_same_metrics_on_cpu(tmp_path):
    runs = []
    for i in range(2):
        cfg = resolve_config("gmvq", "cifar10-tiny", None, tiny_overrides(tmp_path / str(i), steps=6))
        runs.append(fit(cfg, log=lambda line: None).history)
    assert runs[0] == [{**r, "images_per_s": runs[0][i]["images_per_s"]} for i, r in enumerate(runs[1])]


@pytest.mark.parametrize("name", TABLE1)
def test_every_method_trains_through_the_runner(tmp_path, name):
    cfg = resolve_config(name, "cifar10-tiny", None, tiny_overrides(tmp_path, steps=4))
    s = fit(cfg, log=lambda line: None).summary
    assert all(math.isfinite(s[k]) for k in ("mse", "perplexity", "code_perplexity"))


# --- the CLI --------------------------------------------------------------------------

def test_cli_run_prints_summary_json_last(tmp_path):
    proc = run_cli("run", "--quantizer", "gmvq", "--dataset", "cifar10-tiny", "--json", *tiny_overrides(tmp_path, steps=5))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["quantizer"] == "gmvq" and summary["steps"] == 5
    assert "test mse" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--quantizer", "gmvqq", "--dataset", "cifar10-tiny"], "did you mean 'gmvq'"),
    (["run", "--quantizer", "gmvq", "--dataset", "cifar10-tiny", "train.epoch=1"], "did you mean 'epochs'"),
    (["run", "--dataset", "cifar10-tiny"], "--quantizer"),
    (["run", "--quantizer", "gmvq", "--dataset", "npz", "data.train=/nonexistent/*.npz", "data.test=/x.npz"],
     "matches no file"),
])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, args, message):
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_list(cli):
    proc = cli("list", "--json")
    names = {q["name"] for q in json.loads(proc.stdout)["quantizers"]}
    assert set(TABLE1) <= names
