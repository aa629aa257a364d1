"""DistributedDataParallel on CPU (vqbench/training/ddp.py): 2 gloo ranks through torchrun
(tests/_ddp_worker.py).

One torchrun job runs every scenario (process start-up is most of the cost); each test
checks one property of what the ranks saved. The job is killed as a process group after
JOB_TIMEOUT_S and every collective in it times out after 60 s, so nothing can hang.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import REPO_ROOT as REPO
from vqbench.errors import UserError
from vqbench.training import ddp as distributed


JOB_TIMEOUT_S = 240


def _run_job(out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               VQBENCH_NO_PROGRESS="1", OMP_NUM_THREADS="1", VQBENCH_DIST_TIMEOUT_S="60")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "tests._ddp_worker", str(out)]  # a module from REPO: a file would put tests/ on sys.path
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: a timeout kills the workers too
    try:
        stdout, stderr = proc.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"the 2-rank job did not finish in {JOB_TIMEOUT_S} s (a hang?)\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    done = _run_job(out)
    assert done.returncode == 0, done.stderr[-4000:]

    def load(name: str, rank: int):
        return torch.load(out / f"{name}-rank{rank}.pt", weights_only=False)

    return SimpleNamespace(out=out, load=load)


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs between ranks"


def test_codebooks_stay_bitwise_identical_with_kmeans_replacement_and_opt(job):
    r0, r1 = job.load("replace-opt", 0), job.load("replace-opt", 1)
    assert sum(r0["replaced"]) > 0, "no dead code was replaced: the test would not test replacement"
    assert r0["replaced"] == r1["replaced"]
    assert_bitwise_equal(r0["state"], r1["state"])  # embedding, affine, steps_unused, the whole model
    assert "quantizer.steps_unused" in r0["state"]


def test_gmvq_state_identical_with_first_batch_calibration_and_global_aggregate(job):
    r0, r1 = job.load("gmvq", 0), job.load("gmvq", 1)
    assert_bitwise_equal(r0["state"], r1["state"])  # precision_scale is a data-dependent buffer
    assert bool(r0["state"]["quantizer.calibrated"])


def test_two_ranks_of_batch_b_match_one_process_of_batch_2b(job):
    """vqvae after 6 steps (k-means init, AdamW, warm-up): 2 × 8 vs 1 × 16, same seed."""
    from tests._ddp_worker import SMALL  # noqa: PLC0415 - the same configuration as the ranks
    from vqbench.config import resolve_config
    from vqbench.training import Trainer

    ddp = job.load("vqvae", 0)
    assert_bitwise_equal(ddp["state"], job.load("vqvae", 1)["state"])
    cfg = resolve_config("vqvae", "cifar10-tiny", None,
                         [*SMALL, f"out={job.out / 'single'}", "train.max_steps=6", "name=vqvae"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run (OMP_NUM_THREADS=1); on a busy machine also far faster
    try:
        single = Trainer(cfg, log=lambda line: None)
        single.fit()
    finally:
        torch.set_num_threads(threads)
    one = single.model.state_dict()
    for key, value in one.items():
        torch.testing.assert_close(ddp["state"][key], value, rtol=1e-4, atol=1e-5, msg=f"{key} differs")
    for a, b in zip(ddp["history"], single.history):
        assert a["step"] == b["step"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["mse"] == pytest.approx(b["mse"], rel=1e-4)


def test_global_aggregated_posterior_gives_the_one_process_kl_gradient(job):
    ranks = [job.load("kl-grad", rank) for rank in (0, 1)]
    for r in ranks:
        torch.testing.assert_close(r["q_global"], r["q_one"], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(r["ddp_grad"], r["one_grad"], rtol=1e-10, atol=1e-14)
    # Jensen: the ranks' mean "local" KL over-estimates the global batch's KL(q^B ‖ U).
    assert sum(r["kl_local"] for r in ranks) / 2 > ranks[0]["kl_global"]


def test_an_exception_on_rank_0_stops_every_rank_in_lockstep(job):
    for rank in (0, 1):
        assert job.load("pruned", rank)["outcome"] == "pruned at epoch 1"


def test_cli_under_torchrun_rank0_writes_and_reports_once(job):
    r0, r1 = job.load("cli", 0), job.load("cli", 1)
    assert r0["code"] == r1["code"] == 0
    assert r1["stdout"] == "", "only rank 0 reports"
    summary = json.loads(r0["stdout"].strip().splitlines()[-1])
    assert summary["world_size"] == 2
    run_dir = Path(summary["run_dir"])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, summary["epochs"] + 1))
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert not any(k.startswith("module.") for k in state["model"]), "checkpoints load without DDP"
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.jsonl",
                                                         "summary.json"]


def test_inference_on_one_rank_does_not_communicate(job):
    metrics = job.load("solo-eval", 0)
    assert metrics["codes_used"] >= 1


def test_global_batch_must_divide_evenly():
    ctx = distributed.DistContext(rank=0, world_size=3)
    assert ctx.local_batch_size(24) == 8
    with pytest.raises(UserError, match="divisible by the number of processes"):
        ctx.local_batch_size(16)


def test_resume_restores_each_ranks_own_rng(job):
    ranks = [job.load("resume-rng", r) for r in (0, 1)]
    for r in ranks:
        assert torch.equal(r["restored"], r["saved"])
    assert not torch.equal(ranks[0]["saved"], ranks[1]["saved"])  # two streams, both kept
