"""vqbench/results/table.py: Table 1 in the paper's order, missing rows said as such, and the
recipe heading."""
from __future__ import annotations

import pytest

from tests.conftest import fake_summary
from vqbench.config import resolve_config
from vqbench.results import build_table1, to_markdown
from vqbench.rows import append_row, load_results


def test_table1_paper_order_missing_rows_and_recipe_heading(tmp_path):
    for q, mse in (("gmvq", 0.00313), ("vqvae", 0.006)):
        cfg = resolve_config(q, "cifar10", overrides=[])
        append_row(tmp_path, cfg, fake_summary(cfg, mse=mse, perplexity=700.0))
    short = ["data.train=../shared/data/cifar10/train-0.npz", "data.test=x.npz", "train.max_steps=5"]
    cfg = resolve_config("sqvae", "npz", overrides=short)  # a lone short run: a recipe covering 1 method
    append_row(tmp_path, cfg, fake_summary(cfg, epochs=1, steps=5, train=12500))
    table = build_table1(load_results(tmp_path))
    frame = table.frame.set_index("quantizer")
    assert list(table.frame["method"])[:2] == ["VQVAE", "VQVAE + l_2"] and len(frame) == 11
    assert frame.loc["gmvq", "CIFAR10 MSE"] == "3.13" and frame.loc["gmvq", "CIFAR10 MSE diff"] == 0.0
    assert frame.loc["vqvae", "CIFAR10 ppl diff"] == pytest.approx(700.0 - 14.0)
    assert frame.loc["sqvae", "CIFAR10 MSE"] == "no run"  # the full recipe won; nothing invented
    assert frame.loc["gmvq", "CelebA MSE"] == "no run"
    assert table.headings["cifar10"].startswith("the paper's recipe")
    md = to_markdown(table)
    assert "| GM-VQ + Entropy | no run | 3.11 |" in md
    # The npz rows alone: the heading says the recipe is not the paper's, and why.
    only_short = load_results(tmp_path)
    only_short = only_short[only_short["dataset"] == "npz"]
    heading = build_table1(only_short).headings["cifar10"]
    assert heading.startswith("NOT the paper's recipe") and "12500 train images" in heading
