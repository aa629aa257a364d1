"""The table of a suite that is not Table 1: one row per quantizer, in the suite's order.

Each metric is the mean ± std (n) over the quantizer's finished seeds; with ``versus``, each
one's difference from that quantizer, marked ≈ when within noise (:mod:`.compare`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .compare import check_versus, compare, versus_note, versus_text
from .suite import plan_suite, suite_spec
from .table import DEFAULT_METRICS, METRIC_COLUMNS, Table1, build_table1, check_metrics, mean_std_cell, results_seeds


@dataclass
class SuiteTable:
    frame: pd.DataFrame  # one row per quantizer of the suite, in the suite's order
    heading: str
    metrics: tuple[str, ...]
    notes: list[str] = field(default_factory=list)

    def title(self) -> str:
        return "\n".join([self.heading, *self.notes])


def build_suite_table(results: pd.DataFrame, suite: str, metrics: tuple[str, ...],
                      versus: str | None = None) -> SuiteTable:
    """One row per quantizer of ``suite``: each metric's mean ± std (n) over its finished seeds,
    and with ``versus`` each one's difference from that quantizer, marked when within noise."""
    metrics = check_metrics(metrics)
    spec = suite_spec(suite)
    own_seeds = set(spec.get("seeds", [0]))
    plan = plan_suite(suite, seeds=sorted(own_seeds | results_seeds(results)))
    # A seed outside the suite's list counts as planned only where a row was run with it
    # (``vqbench suite --seeds``); other suites' seeds in the same rows are not this one's plan.
    ran = set(results["config_hash"]) if "config_hash" in results else set()
    plan = [run for run in plan if run.seed in own_seeds or run.config_hash in ran]
    names = list(dict.fromkeys(run.quantizer for run in plan))
    check_versus(versus, names)
    rows = results[results["config_hash"].isin({run.config_hash for run in plan})]
    done = rows[rows["status"] == "finished"]
    records = []
    for name in names:
        mine = done[done["quantizer"] == name]
        record: dict[str, object] = {"method": name, "quantizer": name}
        for metric in metrics:
            label, scale, digits, _ = METRIC_COLUMNS[metric]
            values = mine[metric].dropna() if metric in mine else mine.iloc[0:0, 0]
            text = mean_std_cell(values, scale, digits)[1]
            if mine.empty:
                text = "failed" if (rows["quantizer"] == name).any() else "no run"
            record[label] = text or "n/a"
            if versus is not None and name != versus and not mine.empty and metric in done:
                ref = done.loc[done["quantizer"] == versus, metric]
                record[f"{label} vs {versus}"] = versus_text(compare(values, ref), scale, digits) if len(ref) else ""
            elif versus is not None:
                record[f"{label} vs {versus}"] = ""
        records.append(record)
    heading = f"Suite {suite}: {spec.get('description', '')}".rstrip(": ")
    notes = [f"{len(done)} finished runs of {len(plan)} planned; mean ± std (n) over seeds"]
    if versus is not None:
        notes.append(versus_note(versus))
    return SuiteTable(pd.DataFrame(records), heading, metrics, notes)


def is_table1_suite(suite: str) -> bool:
    """Every quantizer of the suite is a row of the paper's Table 1."""
    from ..registry import get_quantizer_entry

    return all(get_quantizer_entry(q).table1_row for q in suite_spec(suite)["quantizers"])


def build_table(results: pd.DataFrame, suite: str | None = None, metrics: tuple[str, ...] = DEFAULT_METRICS,
                versus: str | None = None) -> Table1 | SuiteTable:
    """Table 1's layout for no suite or a Table 1 suite, else the suite's own table."""
    if suite is None or is_table1_suite(suite):
        return build_table1(results, suite, metrics, versus)
    return build_suite_table(results, suite, metrics, versus)
