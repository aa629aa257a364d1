"""tools/collapse_trace.py: the records of a run's first steps, and its refusals (one line, exit 2)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.conftest import fast_overrides
from vqbench import resolve_config

_spec = importlib.util.spec_from_file_location("collapse_trace", Path(__file__).parents[2] / "tools" / "collapse_trace.py")
collapse_trace = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(collapse_trace)


def test_a_trace_records_the_first_steps_from_the_k_means_codebook(tmp_path):
    cfg = resolve_config("vqvae", "cifar10-tiny", None, fast_overrides(tmp_path, steps=10))
    records = collapse_trace.trace(cfg, steps=3, every=2)
    assert [r["step"] for r in records] == [1, 2]
    first = records[0]
    assert first["method"] == "vqvae" and first["moved_used"] == first["moved_unused"] == 0.0
    assert 1 <= first["batch_codes"] == first["window_codes"] <= cfg.quantizer.num_codes
    assert first["mean_shift"] == 0.0 and first["z_rms"] > 0 and first["stranded"] >= 0


def test_bad_input_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        collapse_trace.main(["vqvae", "--every", "0"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("collapse_trace: error: argument --every: must be a whole number >= 1, "
                                       "got '0' (see collapse_trace --help)\n")
    assert collapse_trace.main(["vqvae", "--suite", "nosuch"]) == 2
    assert collapse_trace.main(["vqvaee"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("collapse_trace: error: unknown suite 'nosuch'")
    assert "has no quantizer 'vqvaee'; did you mean 'vqvae'" in err[1]
