"""``vqbench table --metrics``: PSNR, SSIM, usage and the other metrics as optional columns
(ours only: the paper reports none of them); the default layout is the paper's, unchanged."""
from __future__ import annotations

import pytest

from tests.conftest import fake_summary
from vqbench.cli import main
from vqbench.config import resolve_config
from vqbench.errors import UserError
from vqbench.results import build_table1
from vqbench.results.table import check_metrics
from vqbench.rows import append_row, load_results


@pytest.fixture
def results(tmp_path):
    cfg = resolve_config("gmvq", "cifar10", overrides=[])
    append_row(tmp_path, cfg, {**fake_summary(cfg, mse=0.00313, perplexity=700.0), "psnr": 25.04, "ssim": 0.8123,
                               "usage": 0.75})
    cfg = resolve_config("vqvae", "cifar10", overrides=[])
    append_row(tmp_path, cfg, fake_summary(cfg, mse=0.006))  # a row from before PSNR existed
    return tmp_path


def test_optional_columns(results):
    table = build_table1(load_results(results), metrics=("mse", "psnr", "ssim", "perplexity", "usage"))
    frame = table.frame.set_index("quantizer")
    assert frame.loc["gmvq", "CIFAR10 PSNR"] == "25.04" and frame.loc["gmvq", "CIFAR10 SSIM"] == "0.8123"
    assert frame.loc["gmvq", "CIFAR10 usage"] == "0.750" and frame.loc["gmvq", "CIFAR10 MSE"] == "3.13"
    assert frame.loc["vqvae", "CIFAR10 PSNR"] == "n/a" and frame.loc["sqvae", "CIFAR10 PSNR"] == "no run"
    assert "CIFAR10 PSNR paper" not in frame and "CIFAR10 ppl paper" in frame
    assert list(frame.columns[:6]) == ["method", "CIFAR10 MSE", "CIFAR10 MSE paper", "CIFAR10 MSE diff",
                                       "CIFAR10 PSNR", "CIFAR10 SSIM"]
    assert "PSNR (dB)" in table.title()


def test_default_is_the_papers_layout_with_code_perplexity_beside(results):
    default = build_table1(load_results(results))
    assert [c for c in default.frame.columns if c.startswith("CIFAR10")] == [
        "CIFAR10 MSE", "CIFAR10 MSE paper", "CIFAR10 MSE diff", "CIFAR10 ppl", "CIFAR10 ppl paper", "CIFAR10 ppl diff",
        "CIFAR10 code ppl"]  # a soft q(c|x) can read 1024 while one code is used: the argmax codes' beside it
    assert default.title().startswith("Table 1 (GM-VQ paper) rows: test MSE (x1e-3), perplexity, code perplexity")


def test_cli_and_unknown_metrics(results, capsys):
    assert main(["table", str(results), "--metrics", "mse,psnr,ssim,perplexity"]) == 0
    assert "| GM-VQ | 3.13 | 3.13 | +0.00 | 25.04 | 0.8123 | 700.0 |" in capsys.readouterr().out
    assert main(["table", str(results), "--metrics", "mse,psnrr"]) == 2
    assert "unknown metric 'psnrr'; did you mean 'psnr'?" in capsys.readouterr().err
    with pytest.raises(UserError, match="no metrics"):
        check_metrics([])
