"""``vqbench sweep`` (issue 5): sweep files, the shared trial budget, resume, lost trials, report.

Trials train a deliberately tiny model (TINY) so a trial takes about a second on CPU; what is
under test is the bookkeeping around ``fit``, not the quantizer.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from conftest import run_cli
from vqbench.config import config_hash
from vqbench.errors import UserError
from vqbench.sweep import TrialObjective, available_sweeps, load_sweep, open_study, report, sweep
from vqbench.sweep.storage import budget, make_storage, recover_lost_trials, worker_identity

TINY = ["device=cpu", "data.limit=32", "data.test_limit=16", "model.channels=4", "model.res_blocks=0",
        "model.latent_dim=4", "quantizer.num_codes=8", "train.kmeans_samples=64", "train.max_steps=2",
        "train.batch_size=16", "train.eval_batch_size=16"]


def tiny(name: str):
    return load_sweep(name).with_base(dataset="cifar10-tiny", overrides=TINY)


def check_study(storage: str, study_name: str, n: int) -> list[optuna.trial.FrozenTrial]:
    """Exactly n complete trials, numbered 0..n-1, none running or waiting, each with its run folder."""
    study = optuna.load_study(study_name=study_name, storage=make_storage(storage))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n, [t.state for t in trials]
    assert [t.number for t in trials] == list(range(n))
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n  # no trial ran twice
    for t in trials:
        run_dir = Path(t.user_attrs["run_dir"])
        assert (run_dir / "summary.json").is_file() and run_dir.name == f"trial-{t.number:04d}"
        assert '"trial": %d' % t.number in (run_dir / "sweep_trial.json").read_text()
    return trials


# --- sweep files ---------------------------------------------------------------------
def test_shipped_sweeps_load_and_resolve():
    assert {"gamma", "beta", "gamma-beta"} <= set(available_sweeps())
    gamma, beta, both = load_sweep("gamma"), load_sweep("beta"), load_sweep("gamma-beta")
    assert [p.key for p in gamma.searched] == ["quantizer.gamma"] and gamma.base_config().quantizer.beta == 1.0
    assert [p.key for p in beta.searched] == ["quantizer.beta"] and beta.searched[0].low >= 1.0
    assert beta.base_config().quantizer.gamma == 0.01  # fixed
    assert both.directions == ["minimize", "maximize"] and both.pruner is None
    cfg = gamma.with_base("cifar10-tiny", ["train.max_steps=7"]).run_config({"quantizer.gamma": 1e-5})
    assert (cfg.data.name, cfg.train.max_steps, cfg.quantizer.gamma) == ("cifar10-tiny", 7, 1e-5)


@pytest.mark.parametrize("text, message", [
    ("base: {quantizer: gmvq}\nspace: {quantizer.gamma: {low: 1, high: 0.1}}\nobjectives: [{metric: mse, direction: minimize}]",
     "space.quantizer.gamma: low (1) must be below high (0.1)"),
    ("base: {quantizer: gmvq}\nspace: {quantizer.gamma: {low: 0, high: 1, log: true}}\nobjectives: [{metric: mse, direction: minimize}]",
     "space.quantizer.gamma.low: must be > 0 on a log scale"),
    ("base: {quantizer: gmvq}\nspace: {quantizer.gamma: {low: 0.1, high: 1}}\nobjective: []",
     "objective: unknown key; did you mean 'objectives'?"),
    ("base: {quantizer: gmvq}\nspace: {quantizer.gamma: {low: 0.1, high: 1}}\nobjectives: [{metric: msee, direction: minimize}]",
     "objectives[0].metric: unknown metric 'msee'; did you mean 'mse'?"),
    ("base: {quantizer: gmvq}\nspace: {quantizer.gamma: {low: 0.1, high: 1}}\nobjectives: [{metric: mse, direction: minimize}, "
     "{metric: perplexity, direction: maximize}]\npruner: {name: median}", "pruner: Optuna cannot prune a multi-objective"),
    ("base: {quantizer: gmvq}\nspace: [1, 2]\nobjectives: [{metric: mse, direction: minimize}]", "space: must map config keys"),
    ("base: {quantizer: gmvq}\nspace: {quantizer.gamma: {low: 0.1, high: 1}}\nobjectives: [{metric: mse, direction: minimize}]\n"
     "sampler: {name: tpee}", "sampler.name: unknown sampler 'tpee'; did you mean 'tpe'?"),
])
def test_malformed_sweep_file_names_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=None) as info:
        load_sweep(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_bad_search_key_fails_before_any_trial(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("base: {quantizer: gmvq, dataset: cifar10-tiny}\nspace: {quantizer.gama: {low: 0.1, high: 1}}\n"
                    "objectives: [{metric: mse, direction: minimize}]\n")
    with pytest.raises(UserError, match="gama"):
        sweep(load_sweep(path), out=tmp_path)
    assert not (tmp_path / "runs").exists()


# --- budget, resume, workers (journal) -------------------------------------------------
def test_journal_two_workers_exact_budget_then_resume(tmp_path):
    spec = tiny("gamma")
    first = sweep(spec, out=tmp_path, workers=2, n_trials=4, log=lambda s: None)
    assert first.worker_exit_codes == [0, 0] and first.counts["complete"] == 4
    journal = str(tmp_path / "optuna.journal")
    trials = check_study(journal, "gamma-cifar10-tiny", 4)
    assert len({t.user_attrs["worker_index"] for t in trials}) == 2  # both workers ran trials
    assert len({t.user_attrs["sampler_seed"] for t in trials}) == 2  # each its own seed
    again = sweep(spec, out=tmp_path, workers=1, n_trials=6, log=lambda s: None)
    assert again.counts["complete"] == 6
    check_study(journal, "gamma-cifar10-tiny", 6)
    nothing = sweep(spec, out=tmp_path, n_trials=6, log=lambda s: None)
    assert nothing.worker_exit_codes == [] and nothing.counts["complete"] == 6
    # Another base run under the same study name is refused, not mixed in.
    with pytest.raises(UserError, match="different base config"):
        sweep(spec.with_base(overrides=["train.max_steps=3"]), out=tmp_path, n_trials=7)


def test_dead_workers_trial_is_failed_and_rerun_with_its_params(tmp_path):
    spec = tiny("gamma")
    journal = str(tmp_path / "optuna.journal")
    study, _ = open_study(spec, journal, "g", base_hash=config_hash(spec.base_config()))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lost = study.ask({"quantizer.gamma": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)})
    for k, v in {**worker_identity(), "worker_pid": dead.pid}.items():
        lost.set_user_attr(k, v)
    alive = study.ask()  # a RUNNING trial of a live worker (this process): left alone
    for k, v in worker_identity().items():
        alive.set_user_attr(k, v)
    assert recover_lost_trials(study) == [0]
    assert recover_lost_trials(study) == []  # re-queued once only
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    study.tell(alive, state=TrialState.FAIL)  # interrupted before it sampled anything: nothing to re-queue
    assert budget(study)["used"] == 0
    # Resuming runs the re-queued trial, with the lost trial's gamma, and nothing else.
    result = sweep(spec, storage=journal, study_name="g", out=tmp_path, n_trials=1, log=lambda s: None)
    assert result.counts["complete"] == 1 and result.counts["waiting"] == 0
    done = study.get_trials(states=(TrialState.COMPLETE,))[0]
    assert done.params == lost.params and done.system_attrs["failed_trial"] == 0
    assert Path(done.user_attrs["run_dir"], "summary.json").is_file()


def test_pruner_sees_every_epoch_and_stops_a_bad_trial(tmp_path):
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=2))
    study.add_trial(optuna.trial.create_trial(value=0.1, intermediate_values={1: 0.1, 2: 0.1}))
    objective = TrialObjective(tiny("gamma"), "s", tmp_path, 0, 0, None, {}, None, print)
    trial = study.ask()
    on_epoch = objective._reporter(trial)
    on_epoch({"epoch": 1, "mse": 0.5})  # worse than the median, but within the warm-up epoch: goes on
    with pytest.raises(optuna.TrialPruned):
        on_epoch({"epoch": 2, "mse": 0.5})
    assert study.get_trials()[-1].intermediate_values == {1: 0.5, 2: 0.5}


# --- report ---------------------------------------------------------------------------
def test_report_pareto_front_table_and_plots(tmp_path, capsys):
    spec = tiny("gamma-beta")
    journal = str(tmp_path / "optuna.journal")
    study, _ = open_study(spec, journal, "gamma-beta-cifar10-tiny", base_hash=config_hash(spec.base_config()))
    dist = {"quantizer.gamma": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
            "quantizer.beta": optuna.distributions.FloatDistribution(1.0, 16.0, log=True)}
    points = [(0.030, 10.0), (0.020, 8.0), (0.025, 9.0), (0.040, 30.0), (0.035, 20.0), (0.050, 25.0)]
    for i, (mse, ppl) in enumerate(points):  # (0.050, 25) is dominated by (0.040, 30); (0.025, 9) by nothing
        study.add_trial(optuna.trial.create_trial(
            values=[mse, ppl], distributions=dist, params={"quantizer.gamma": 10 ** -(i % 4), "quantizer.beta": 1.0 + i}))
    result = report(spec, out=tmp_path, log=print)
    front = sorted(result.frame[result.frame.on_front].trial)
    assert front == [0, 1, 2, 3, 4]
    assert list(result.best.trial) == [1, 2, 0, 4, 3]  # sorted by mse
    printed = capsys.readouterr().out
    assert "Pareto front" in printed and "5 trials" in printed
    for key in ("csv", "parquet", "history", "pareto"):
        assert result.files[key].is_file() and result.files[key].stat().st_size > 0
    assert set(pd.read_parquet(result.files["parquet"]).columns) >= {"trial", "quantizer.gamma", "mse", "perplexity"}


# --- the command line -----------------------------------------------------------------
def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    cases = [(["sweep", "gama"], "unknown sweep 'gama'; did you mean 'gamma'"),
             (["sweep", "gamma", "--storage", "postgresql://nobody:secret@127.0.0.1:1/none", "--out", str(tmp_path)],
              "cannot open the sweep storage postgresql://nobody:***@127.0.0.1:1/none")]
    for args, message in cases:
        proc = run_cli(*args, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "secret" not in proc.stderr, proc.stderr


def test_report_without_a_sweep_says_where_it_looked(tmp_path):
    with pytest.raises(UserError, match="no sweep storage at .*empty"):
        report(load_sweep("gamma"), out=tmp_path / "empty")
    open_study(tiny("gamma"), str(tmp_path / "optuna.journal"), "gamma-cifar10-tiny", base_hash="h")
    with pytest.raises(UserError, match="no study 'nope'"):
        report("nope", out=tmp_path)


def test_sigkill_one_of_two_workers_mid_trial_then_rerun_completes_the_budget(tmp_path):
    """Issue 9, for real: two worker processes, one SIGKILLed while its trial runs; the re-run
    fails that trial, re-runs its parameters, and ends with exactly the budget, no duplicates."""
    import os
    import signal
    import time

    slow = [o for o in TINY if not o.startswith("train.max_steps")] + ["train.max_steps=60", "train.epochs=100"]
    args = ["sweep", "gamma", "--dataset", "cifar10-tiny", "--n-trials", "4", "--workers", "2",
            "--out", str(tmp_path), *slow]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "VQBENCH_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vqbench", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = tmp_path / "optuna.journal"
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if journal.exists():
            try:
                study = optuna.load_study(study_name="gamma-cifar10-tiny", storage=make_storage(str(journal)))
            except KeyError:  # the study is not created yet
                continue
            running = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING
                       and "worker_pid" in t.user_attrs and t.params]
            if running:
                victim = running[0]
    assert victim is not None, "no trial was seen running"
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
    proc.communicate(timeout=300)

    rerun = run_cli(*args, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    study = optuna.load_study(study_name="gamma-cifar10-tiny", storage=make_storage(str(journal)))
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4, [t.state for t in trials]
    assert study.trials[victim.number].state == TrialState.FAIL
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retried) == 1 and retried[0].params == victim.params
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 4  # none ran twice
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
