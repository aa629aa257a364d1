"""``vqbench usage``: the sorted code histogram, dead codes, usage and code perplexity."""
from __future__ import annotations

import json

import pytest

from vqbench import load_run
from vqbench.cli import main
from vqbench.data import load_cifar10_tiny
from vqbench.training import evaluate


def test_numbers_match_the_evaluation_and_a_png_is_written(run, tmp_path, capsys):
    out = tmp_path / "usage.png"
    assert main(["usage", str(run), "--device", "cpu", "--out", str(out), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    stats = json.loads(lines[-1])
    assert out.is_file() and "codes used" in lines[0] and "dead" in lines[0]
    tok = load_run(run, device="cpu")
    metrics = evaluate(tok.model, load_cifar10_tiny(None).test[:32], tok.config.train.eval_batch_size)
    assert stats["codes_used"] == metrics["codes_used"] and stats["usage"] == metrics["usage"]
    assert stats["code_perplexity"] == pytest.approx(metrics["code_perplexity"], rel=1e-12)
    assert stats["dead_codes"] == 16 - stats["codes_used"] and stats["positions"] == 32 * 64


def test_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["usage", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
