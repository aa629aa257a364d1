"""``vqbench run`` (vqbench/cli/run.py): the summary JSON printed last, bad input one line and
exit 2 in a subprocess, and ``--nproc`` relaunching the same command through torchrun. The
full table of ``run``'s mistakes is test_bad_input.py."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.conftest import fast_overrides, run_cli
from vqbench.cli.run import _argv_without_nproc
from vqbench.training import ddp as distributed


def test_cli_run_prints_summary_json_last(tmp_path):
    proc = run_cli("run", "--quantizer", "gmvq", "--dataset", "cifar10-tiny", "--json", *fast_overrides(tmp_path, steps=5))
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


def test_nproc_relaunches_the_same_command_through_torchrun(monkeypatch):
    from vqbench.cli import build_parser

    args = build_parser().parse_args(["--registry", "mine.yaml", "run", "--nproc", "4", "-q", "gmvq", "-d",
                                      "cifar10-tiny", "--out", "o", "--json", "--resume", "train.max_steps=3"])
    argv = _argv_without_nproc(args)
    assert argv == ["--registry", "mine.yaml", "run", "--quantizer", "gmvq", "--dataset", "cifar10-tiny",
                    "--out", "o", "--json", "--resume", "train.max_steps=3"]
    seen = {}
    monkeypatch.setattr(distributed.subprocess, "run",
                        lambda cmd, check: seen.setdefault("cmd", cmd) and SimpleNamespace(returncode=0))
    assert distributed.launch(4, argv) == 0
    assert seen["cmd"][1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert seen["cmd"][5:] == ["-m", "vqbench", *argv]


def test_bad_nproc_is_one_line(capsys):
    from vqbench.cli import main

    assert main(["run", "--nproc", "0", "-q", "vqvae", "-d", "cifar10-tiny"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "vqbench: error: --nproc must be a whole number ≥ 1, got 0"]


def test_nproc_checks_the_global_batch_before_starting_processes(capsys):
    from vqbench.cli import main

    assert main(["run", "--nproc", "2", "-q", "vqvae", "-d", "cifar10-tiny", "train.batch_size=33"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "vqbench: error: train.batch_size 33 is the global batch and must be divisible by --nproc 2; "
        "use a multiple of 2"]
