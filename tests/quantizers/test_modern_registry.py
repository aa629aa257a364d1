"""Issue 17's quantizers through vqbench: registered with citations, plain layers from
``build_quantizer``, a few runner steps each, bad options as one line and exit 2, the suite."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import fast_overrides, skip_unless_ci
from vqbench.cli import main
from vqbench.registry import build_quantizer, get_quantizer_entry

REGISTRY = yaml.safe_load((Path(__file__).resolve().parents[2] / "registry.yaml").read_text())
NEW = ["fsq", "lfq", "bsq", "simvq", "vqvae-rotation", "vqvae-l2-rotation", "ibq", "vqvae-ema", "rvq"]
CITED = {"fsq": "2309.15505", "lfq": "2310.05737", "bsq": "2406.07548", "simvq": "2411.02038",
         "vqvae-rotation": "2410.06424", "vqvae-l2-rotation": "2410.06424", "ibq": "2412.02692",
         "vqvae-ema": "Razavi", "rvq": "SoundStream"}
REGISTERED = [n for n in NEW if n in REGISTRY["quantizers"]]


def test_list_shows_every_new_name_with_its_citation(capsys):
    assert main(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    for name in REGISTERED:
        assert CITED[name] in lines[name] and CITED[name] in get_quantizer_entry(name).citation


@pytest.mark.parametrize("name", REGISTERED)
def test_plain_layer_on_both_layouts(name):
    torch.manual_seed(0)
    q = build_quantizer(name, num_codes=1024, dim=64)
    z = torch.randn(2, 64, 4, 4)
    out = q(z)
    assert out.z_q.shape == z.shape and out.indices.shape == (2, 4, 4)
    flat = q(torch.randn(10, 64))
    assert flat.z_q.shape == (10, 64) and flat.indices.shape == (10,)
    assert 0 <= int(flat.indices.min()) and int(flat.indices.max()) < q.num_codes
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("name", REGISTERED)
def test_trains_through_the_runner(name, tmp_path):
    from vqbench import fit, resolve_config

    cfg = resolve_config(name, "cifar10-tiny", None, fast_overrides(
        tmp_path, steps=2, **{"quantizer.num_codes": 16, "model.channels": 8, "model.res_blocks": 0,
                             "train.kmeans_samples": 64, "data.test_limit": 16, "train.eval_batch_size": 16}))
    s = fit(cfg, log=lambda line: None).summary
    assert s["status"] == "finished" and s["steps"] == 2 and s["quantizer"] == name
    assert 1 <= s["codes_used"] <= s["num_codes"] and s["mse"] == s["mse"]


@pytest.mark.parametrize("name, override, fragment", [
    ("fsq", "quantizer.levels=[8,5,5]", "levels [8, 5, 5] give 200 codes but num_codes is 1024"),
    ("fsq", "quantizer.levels=[8,2]", "levels must be whole numbers ≥ 3"),
    ("lfq", "quantizer.num_codes=1000", "num_codes must be a power of two"),
    ("bsq", "quantizer.group_size=3", "group_size must divide the 10 bits"),
    ("rvq", "quantizer.depth=0", "depth must be a whole number ≥ 1"),
    ("rvq", "quantizer.stage=vqvae-l3", "did you mean 'vqvae-l2'"),
    ("rvq", "quantizer.stage_options.comitment=1", "did you mean 'commitment'"),
    ("ibq", "quantizer.entropy_temperature=0", "entropy_temperature must be a finite number > 0"),
    ("vqvae-ema", "quantizer.ema_decay=1.5", "ema_decay must be in (0, 1)"),
    ("vqvae-ema", "quantizer.ema_decay=0", "ema_decay must be in (0, 1)"),
])
def test_bad_options_are_one_line_and_exit_2(name, override, fragment, capsys, tmp_path):
    if name not in REGISTRY["quantizers"]:
        skip_unless_ci(f"{name} is not registered yet")
    code = main(["run", "-q", name, "-d", "cifar10-tiny", "--device", "cpu", f"--out={tmp_path}", override])
    err = capsys.readouterr().err.strip()
    assert code == 2 and fragment in err and len(err.splitlines()) == 1, err
    assert not any(tmp_path.iterdir())  # refused before a run folder exists


def test_modern_suite_covers_every_new_name():
    suite = REGISTRY["suites"].get("modern-cifar10-short")
    if suite is None:
        skip_unless_ci("suite not added yet")
    assert set(suite["quantizers"]) == set(NEW) | {"gmvq", "vqvae-l2-replace"}
    assert suite["dataset"] == "npz"
    overrides = dict(o.split("=", 1) for o in suite["overrides"])
    assert overrides["data.train"].endswith("cifar10/train-0.npz") and overrides["data.test"].endswith("cifar10/test.npz")
    assert (int(overrides["train.epochs"]), int(overrides["train.batch_size"])) == (4, 256)  # 192 steps
