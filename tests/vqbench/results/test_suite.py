"""vqbench/results/suite.py: a suite resumes after a kill without repeating runs (and its run
folders feed the plots); a suite's mistakes are one line."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

import vqbench.training as runner
from vqbench.errors import UserError
from vqbench.registry import registry_document
from vqbench.results import plan_suite, run_suite
from vqbench.results.plots import plot_runs
from vqbench.rows import load_results


TINY = ["train.max_steps=3", "train.batch_size=32", "train.kmeans_samples=512", "quantizer.num_codes=32",
        "device=cpu"]


@pytest.fixture
def tiny_suite(monkeypatch):
    suites = dict(registry_document().get("suites") or {})
    suites["tiny-test"] = {"dataset": "cifar10-tiny", "quantizers": ["vqvae", "gmvq", "gmvq-entropy"],
                           "seeds": [0], "overrides": TINY}
    monkeypatch.setitem(registry_document(), "suites", suites)
    return "tiny-test"


def test_suite_resumes_after_a_kill_without_repeating_runs(tiny_suite, tmp_path, monkeypatch):
    over = [f"results={tmp_path / 'results'}", f"out={tmp_path / 'runs'}"]
    trained: list[str] = []
    real_fit = runner.fit

    def fit_then_die(cfg, **kw):
        if len(trained) == 2:
            raise KeyboardInterrupt  # the user's Ctrl-C (or a kill) in the middle of the third run
        trained.append(cfg.quantizer.name)
        return real_fit(cfg, **kw)

    monkeypatch.setattr(runner, "fit", fit_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_suite(tiny_suite, over, log=lambda _: None, fit_log=lambda _: None)
    assert trained == ["vqvae", "gmvq"] and len(load_results(tmp_path / "results")) == 2

    monkeypatch.setattr(runner, "fit", lambda cfg, **kw: (trained.append(cfg.quantizer.name), real_fit(cfg, **kw))[1])
    report = run_suite(tiny_suite, over, log=lambda _: None, fit_log=lambda _: None)
    assert trained[2:] == ["gmvq-entropy"] and len(report.skipped) == 2 and len(report.finished) == 1
    rows = load_results(tmp_path / "results")
    assert sorted(rows["config_hash"]) == sorted(r.config_hash for r in plan_suite(tiny_suite, over))
    again = run_suite(tiny_suite, over, log=lambda _: None, fit_log=lambda _: None)
    assert len(again.skipped) == 3 and trained[3:] == []

    # The run folders feed the plots: gmvq (β 1) and gmvq-entropy (β 2) make Figure 4's boxes.
    written = plot_runs(tmp_path / "runs", tmp_path / "plots")
    assert sorted(p.name for p in written) == ["beta_boxplots.png", "curves.png", "mse_vs_perplexity.png"]
    assert all(p.stat().st_size > 10_000 for p in written)


def test_suite_mistakes_are_one_line(tiny_suite):
    with pytest.raises(UserError, match="did you mean 'tiny-test'"):
        plan_suite("tiny-tset")
    with pytest.raises(UserError, match="unknown config key"):
        plan_suite(tiny_suite, ["train.epoch=3"])


def test_published_rows_keep_their_curves_after_the_run_folders_are_gone(tiny_suite, tmp_path, capsys):
    """A fresh clone has published/ but no run folders: its table and curves come from the rows."""
    import json
    import shutil

    from vqbench.cli import main
    from vqbench.results.publish import publish_rows

    over = [f"results={tmp_path / 'results'}", f"out={tmp_path / 'runs'}"]
    run_suite(tiny_suite, over, seeds=[0], quantizers=["vqvae", "gmvq"], log=lambda _: None, fit_log=lambda _: None)
    rows = load_results(tmp_path / "results")
    history = json.loads(rows.set_index("quantizer").loc["gmvq", "history"])
    assert [r["step"] for r in history] == [3] and history[-1]["mse"] == pytest.approx(rows.set_index("quantizer").loc["gmvq", "mse"])

    written = publish_rows(tmp_path / "results", tmp_path / "published", ["tiny-test"])
    assert sorted(p.name for p in written) == sorted(f"{r}.parquet" for r in rows["run_id"])
    shutil.rmtree(tmp_path / "runs")
    plots = plot_runs(tmp_path / "published", tmp_path / "plots", suite="tiny-test")
    assert "curves.png" in [p.name for p in plots]
    assert main(["results", str(tmp_path / "published")]) == 0
    listed = capsys.readouterr().out
    assert all(run_id in listed for run_id in rows["run_id"])

    with pytest.raises(UserError, match="no finished rows of suite table1-cifar10-cpu-ref"):
        publish_rows(tmp_path / "published", tmp_path / "elsewhere", ["table1-cifar10-cpu-ref"])


def test_a_suite_s_tuned_values_apply_to_their_quantizer_only(tiny_suite, monkeypatch):
    suites = dict(registry_document()["suites"])
    suites["tiny-tuned"] = {**suites[tiny_suite], "tuned": {"gmvq": ["quantizer.gamma=0.003"]}}
    monkeypatch.setitem(registry_document(), "suites", suites)
    plan = {run.quantizer: run for run in plan_suite("tiny-tuned")}
    assert plan["gmvq"].config.quantizer.gamma == 0.003
    assert plan["gmvq-entropy"].config.quantizer.gamma == 0.01  # its registry default
    untuned = {run.quantizer: run for run in plan_suite(tiny_suite)}
    assert plan["vqvae"].config_hash == untuned["vqvae"].config_hash  # shared rows with the untuned suite
    assert plan["gmvq"].config_hash != untuned["gmvq"].config_hash
    suites["tiny-bad"] = {**suites[tiny_suite], "tuned": {"gmvqq": ["quantizer.gamma=0.003"]}}
    with pytest.raises(UserError, match="suite 'tiny-bad': tuned must map the suite's quantizers to KEY=VALUE lists, got 'gmvqq'"):
        plan_suite("tiny-bad")


def test_suite_listing_counts_seeds_and_only_leaves_overrides_to_the_recipe(tiny_suite, capsys, monkeypatch):
    from vqbench.cli import main

    registry_document()["suites"][tiny_suite]["seeds"] = [0, 1]
    assert main(["suite"]) == 0
    assert f"{tiny_suite:<24} 6 runs" in capsys.readouterr().out  # 3 quantizers x 2 seeds
    seen = {}
    planned = SimpleNamespace(config={}, quantizer="gmvq", seed=0, config_hash="0123456789ab")
    monkeypatch.setattr("vqbench.results.plan_suite",
                        lambda name, overrides, seeds, only: seen.update(overrides=overrides, only=only) or [planned])
    assert main(["suite", tiny_suite, "--dry-run", "--only", "gmvq", "results=R", "out=O"]) == 0
    assert seen == {"overrides": ["results=R", "out=O"], "only": ["gmvq"]}
    assert "todo  gmvq" in capsys.readouterr().out
