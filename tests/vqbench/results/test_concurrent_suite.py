"""Two ``vqbench suite`` processes over one suite and one results folder at once (issue 19).

Started together, both see no finished row and train the same runs in the same run folders
side by side (resuming each other's checkpoints, rotating the same files, writing the same
row). Every run must end finished exactly once or twice (never zero), both processes exit 0
without a traceback, and the results and ``vqbench table --suite`` read every row, once.
The suite comes from a registry YAML (``--registry``), as a user's own suite would.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import yaml

from vqbench.cli import main
from vqbench.data import TINY_CIFAR10
from vqbench.registry import reset_registry

REPO_ROOT = Path(__file__).resolve().parents[3]
QUANTIZERS = ["vqvae", "vqvae-l2", "gmvq"]  # Table 1 rows, so that the table shows them
# The bundled images through the npz loader: "cifar10" in the path puts them in Table 1's CIFAR10 column.
RECIPE = [f"data.train={TINY_CIFAR10}", f"data.test={TINY_CIFAR10}", "data.limit=64", "data.test_limit=32",
          "train.max_steps=4", "train.checkpoint_every=1", "train.batch_size=16", "train.eval_batch_size=32",
          "train.kmeans_samples=64", "quantizer.num_codes=16", "model.channels=8", "model.latent_dim=8",
          "model.res_blocks=0", "device=cpu"]


def _suite_file(tmp_path: Path) -> tuple[str, Path]:
    name = f"concurrent-{uuid.uuid4().hex[:6]}"
    path = tmp_path / "my-registry.yaml"
    path.write_text(yaml.safe_dump({"suites": {name: {
        "description": "two writers at once", "dataset": "npz", "quantizers": QUANTIZERS, "seeds": [0],
        "overrides": RECIPE}}}))
    return name, path


def test_two_suites_at_once_finish_every_run_once_or_twice_and_the_table_reads_every_row(tmp_path, capsys):
    name, registry = _suite_file(tmp_path)
    results, out = tmp_path / "results", tmp_path / "runs"
    env = {**os.environ, "VQBENCH_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    argv = [sys.executable, "-m", "vqbench", "--registry", str(registry), "suite", name, f"results={results}",
            f"out={out}"]
    procs = [subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    logs = [p.communicate(timeout=300) for p in procs]
    for proc, (stdout, stderr) in zip(procs, logs):
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr and "error" not in stderr.lower(), stderr
        assert f"suite {name}: " in stdout

    # Per run: trained by one process or both, and each process either trained or skipped it.
    trained: dict[str, int] = {}
    for _, stderr in logs:
        seen = re.findall(r"\] (\S+) seed 0 \((\w+)\): (training|already in .*, skipped)$", stderr, re.M)
        assert sorted(q for q, _, _ in seen) == sorted(QUANTIZERS), stderr
        for _, run_hash, what in seen:
            trained[run_hash] = trained.get(run_hash, 0) + (what == "training")
    assert len(trained) == len(QUANTIZERS) and set(trained.values()) <= {1, 2}, trained
    print(f"runs trained by both processes: {sum(n == 2 for n in trained.values())} of {len(trained)}")
    capsys.readouterr()

    try:
        assert main(["--registry", str(registry), "suite", name, f"results={results}", f"out={out}",
                     "--dry-run"]) == 0
        plan = capsys.readouterr().out.splitlines()
        assert len(plan) == len(QUANTIZERS) and all(line.startswith("done ") for line in plan), plan
        assert main(["results", str(results), "--format", "csv"]) == 0
        rows = capsys.readouterr().out.strip().splitlines()[1:]
        assert len(rows) == len(QUANTIZERS) and all(",finished," in row for row in rows), rows
        assert main(["--registry", str(registry), "table", str(results), "--suite", name]) == 0
        table = capsys.readouterr().out
    finally:
        reset_registry()  # this process's registry knows the file's suite now
    for label in ("| VQVAE |", "| VQVAE + l_2 |", "| GM-VQ |"):
        (line,) = [row for row in table.splitlines() if row.startswith(label)]
        cells = [c.strip() for c in line.split("|")[2:-1]]
        assert re.fullmatch(r"\d+\.\d\d", cells[0]) and re.fullmatch(r"\d+\.\d", cells[3]), line  # ours: MSE, ppl
    assert not list(results.rglob("*.tmp")) and not list(out.rglob(".*.tmp"))


def test_two_writers_of_one_checkpoint_interleaved_at_the_worst_moment(tmp_path, monkeypatch):
    """What the two suites above do by chance, made certain: writer B saves the same run's
    checkpoint in full while writer A is between fsyncing its temporary file and its renames.
    Each needs its own temporary file (pid + time in the name) and a rotation that finds the
    newest already moved; both files end whole."""
    import torch

    from vqbench.training.checkpoint import save_checkpoint

    real_replace, interleaved = os.replace, []

    def replace(src, dst):
        if not interleaved and Path(dst).name == "checkpoint.prev.pt":  # A is about to rotate
            interleaved.append(True)
            save_checkpoint(tmp_path, {"model": {}, "step": 2})  # B, start to end
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(tmp_path, {"model": {}, "step": 1})  # A
    monkeypatch.undo()
    assert interleaved
    steps = {torch.load(tmp_path / name, weights_only=True)["step"] for name in ("checkpoint.pt", "checkpoint.prev.pt")}
    assert steps == {1, 2} and not list(tmp_path.glob(".*.tmp"))
