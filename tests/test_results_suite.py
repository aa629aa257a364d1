"""Results store, resumable suites, Table 1 and plots (issue 7)."""
from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest

import vqbench.training as runner
from vqbench.config import config_hash, resolve_config
from vqbench.errors import UserError
from vqbench.registry import registry_document
from vqbench.results import build_table1, plan_suite, run_suite, to_markdown
from vqbench.results.plots import pareto_front, plot_runs
from vqbench.rows import append_row, load_results

TINY = ["train.max_steps=3", "train.batch_size=32", "train.kmeans_samples=512", "quantizer.num_codes=32",
        "device=cpu"]


def fake_summary(cfg, mse=0.004, perplexity=100.0, epochs=100, steps=19500, train=50000, test=10000):
    h = config_hash(cfg)
    return {"run_id": f"{cfg.quantizer.name}-{cfg.data.name}-{h}-s{cfg.seed}", "config_hash": h,
            "epochs": epochs, "steps": steps, "mse": mse, "perplexity": perplexity, "code_perplexity": 50.0,
            "codes_used": 500, "num_codes": cfg.quantizer.num_codes, "train_images": train, "test_images": test,
            "images_per_s": 1000.0, "wall_s": 1.0, "device_name": "cpu", "torch": "x", "vqbench": "0.1.0",
            "run_dir": "nowhere"}


def test_rows_round_trip_and_concurrent_writers(tmp_path):
    cfgs = [resolve_config(q, "cifar10", overrides=[f"seed={s}"]) for q in ("gmvq", "vqvae") for s in range(4)]
    threads = [threading.Thread(target=append_row, args=(tmp_path, c, fake_summary(c, mse=0.001 * i)))
               for i, c in enumerate(cfgs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = load_results(tmp_path)
    assert len(rows) == 8 and set(rows["status"]) == {"finished"}
    assert not [p for p in (tmp_path / "rows").iterdir() if not p.name.endswith(".parquet")]  # no tmp left
    gm = rows[rows["quantizer"] == "gmvq"].iloc[0]
    assert gm["q.beta"] == 1.0 and json.loads(gm["hparams"])["gamma"] == 0.01
    assert gm["paper_dataset"] == "cifar10" and "git_rev" in rows  # None outside a git checkout
    # Re-writing a run id replaces its row rather than adding one.
    append_row(tmp_path, cfgs[0], fake_summary(cfgs[0], mse=0.5))
    rows = load_results(tmp_path)
    assert len(rows) == 8 and rows["mse"].max() == 0.5


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


def test_pareto_front():
    mse = np.array([1.0, 2.0, 0.5, 3.0, 2.0])
    ppl = np.array([10.0, 20.0, 5.0, 15.0, 30.0])
    assert list(pareto_front(mse, ppl)) == [2, 0, 4]


def test_cli_results_and_table(cli, tmp_path):
    cfg = resolve_config("gmvq", "cifar10", overrides=[])
    append_row(tmp_path, cfg, fake_summary(cfg))
    out = cli("results", str(tmp_path), "--format", "json")
    assert out.returncode == 0 and json.loads(out.stdout)[0]["quantizer"] == "gmvq"
    out = cli("table", str(tmp_path), "--format", "csv")
    assert out.returncode == 0
    frame = pd.read_csv(pd.io.common.StringIO(out.stdout))
    assert len(frame) == 11 and frame.loc[frame["quantizer"] == "gmvq", "CIFAR10 MSE"].astype(str).item() == "4.00"
    bad = cli("table", str(tmp_path / "absent"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr
