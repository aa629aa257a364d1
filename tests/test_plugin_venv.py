"""Done-criterion for issue 8: a fresh venv, vqbench + the example plugin installed from
outside the package, `vqbench list` shows it and `vqbench run` trains it."""
from __future__ import annotations

import json
import os
import subprocess
import venv

import pytest

from conftest import REPO_ROOT


@pytest.mark.slow
def test_fresh_venv_installs_lists_and_trains_the_example_plugin(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)  # reuse torch, pip
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VQBENCH_REGISTRY")}
    env["VQBENCH_NO_PROGRESS"] = "1"
    # A developer machine may hold another checkout installed editable in the system
    # site-packages, whose path entry would shadow this one; the plugin comes only from the venv.
    env["PYTHONPATH"] = str(REPO_ROOT)
    for path in (REPO_ROOT, REPO_ROOT / "examples" / "vqbench-plugin-example"):
        subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                        "-e", str(path)], check=True, env=env, cwd=tmp_path, timeout=120)
    vqbench = [str(py), "-m", "vqbench"]  # run from tmp_path: only the installed copies are importable
    listing = subprocess.run([*vqbench, "list", "--json"], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
    assert listing.returncode == 0 and listing.stderr == "", listing.stderr
    rows = {q["name"]: q for q in json.loads(listing.stdout)["quantizers"]}
    assert rows["example-fvq"]["origin"]["distribution"] == "vqbench-plugin-example"
    assert rows["example-fvq"]["origin"]["version"] == "0.1.0"
    assert rows["example-fvq"]["class"] == "vqbench_plugin_example.factorized:FactorizedVQ"
    try:
        import vector_quantize_pytorch  # noqa: F401
        assert rows["lucid-fsq"]["source"] == "entry point vqbench 0.1.0"  # our adapters: same mechanism
    except ImportError:
        assert "lucid-fsq" in json.loads(listing.stdout)["unavailable"]
    run = subprocess.run([*vqbench, "run", "--quantizer", "example-fvq", "--dataset", "cifar10-tiny",
                          "train.max_steps=20", "train.batch_size=32", "train.kmeans_samples=512", "quantizer.num_codes=64",
                          "model.channels=16", "model.res_blocks=0",
                          "data.test_limit=64", "--out", str(tmp_path / "runs"), "--json"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["quantizer"] == "example-fvq" and summary["steps"] == 20
    assert summary["mse"] < summary["mean_image_mse"] * 2 and summary["codes_used"] >= 1
