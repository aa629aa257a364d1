"""vqbench/results/suite_table.py: a suite of non-Table-1 quantizers gets one row each, runs of
extra seeds count, and ``versus`` marks what is within noise; Table 1 suites keep their layout."""
from __future__ import annotations

from tests.conftest import fake_summary
from vqbench.results import build_suite_table, build_table, build_table1, plan_suite, to_markdown
from vqbench.rows import append_row, load_results

SUITE = "modern-cifar10-short"


def _store(tmp_path, mses: dict[str, list[float]]) -> None:
    for quantizer, values in mses.items():
        runs = plan_suite(SUITE, quantizers=[quantizer], seeds=list(range(len(values))))
        for run, mse in zip(runs, values):
            append_row(tmp_path, run.config, fake_summary(run.config, mse=mse, epochs=4, steps=192, train=12500,
                                                          test=2000))


def test_suite_table_rows_seeds_and_noise_marks(tmp_path):
    _store(tmp_path, {"gmvq": [0.020, 0.021, 0.022], "fsq": [0.010, 0.011, 0.012], "lfq": [0.0205, 0.0215, 0.0200]})
    other = plan_suite("table1-cifar10-short", quantizers=["vqvae"], seeds=[5])[0]  # another suite's seed
    append_row(tmp_path, other.config, fake_summary(other.config, mse=0.03, epochs=1, steps=150, train=12500))
    results = load_results(tmp_path)
    table = build_table(results, suite=SUITE, metrics=("mse", "codes_used"), versus="gmvq")
    frame = table.frame.set_index("quantizer")
    assert list(frame.index) == [run.quantizer for run in plan_suite(SUITE)]
    assert frame.loc["fsq", "MSE"] == "11.00 ±1.00 (n=3)"  # seeds 1 and 2 were run with --seeds: counted
    assert frame.loc["fsq", "MSE vs gmvq"].startswith("-10.00 (p=")  # far apart: significant, no ≈
    assert frame.loc["lfq", "MSE vs gmvq"].startswith("-0.33 ≈ (p=")  # inside the spread: within noise
    assert frame.loc["gmvq", "MSE vs gmvq"] == "" and frame.loc["simvq", "MSE"] == "no run"
    # the suite's 11 at seed 0 and the 6 runs made with --seeds 1 2; seed 5 belongs to another suite
    assert "9 finished runs of 17 planned" in table.title()
    md = to_markdown(table)
    assert md.splitlines()[0].startswith(f"> Suite {SUITE}:") and "| fsq | 11.00 ±1.00 (n=3) |" in md


def test_table1_layout_stays_for_table1_suites_and_gains_versus(tmp_path):
    runs = [r for r in plan_suite("table1-cifar10-short", seeds=[0, 1]) if r.quantizer in ("gmvq", "vqvae")]
    for run in runs:
        mse = {"gmvq": 0.004, "vqvae": 0.008}[run.quantizer] + 0.0001 * run.seed
        append_row(tmp_path, run.config, fake_summary(run.config, mse=mse, epochs=1, steps=150, train=12500))
    results = load_results(tmp_path)
    table = build_table(results, suite="table1-cifar10-short", versus="gmvq")
    assert type(table) is type(build_table1(results))
    frame = table.frame.set_index("quantizer")
    assert frame.loc["vqvae", "CIFAR10 MSE"] == "8.05 ±0.07 (n=2)"
    assert frame.loc["vqvae", "CIFAR10 MSE vs gmvq"].startswith("+4.00 (p=")
    assert frame.loc["vqvae", "CIFAR10 code ppl"] == "50.0 ±0.0 (n=2)"  # code_perplexity is a default column
    assert "Welch" in table.title()
    assert build_suite_table(results, "table1-cifar10-short", ("mse",)).frame["quantizer"].iloc[0] == "vqvae"


def test_a_suite_of_a_few_table1_methods_shows_only_those_rows(tmp_path):
    for run in plan_suite("schedule-cifar10-cpu-8ep"):
        append_row(tmp_path, run.config, fake_summary(run.config, mse=0.004, epochs=8, steps=1560, train=50000,
                                                      test=10000))
    table = build_table(load_results(tmp_path), suite="schedule-cifar10-cpu-8ep", versus="gmvq")
    assert type(table) is type(build_table1(load_results(tmp_path)))
    assert list(table.frame["quantizer"]) == ["vqvae-l2-replace", "gmvq"]  # Table 1's order, no "no run" rows
    assert table.frame.set_index("quantizer").loc["gmvq", "CIFAR10 MSE"] == "4.00"
