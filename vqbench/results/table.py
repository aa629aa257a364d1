"""Table 1 of the GM-VQ paper with our numbers beside the paper's.

Rows in the paper's order (the order of ``registry.yaml``'s quantizers that carry a
``table1_row``), columns CIFAR10 / CelebA × MSE (×10⁻³) / perplexity: ours, the paper's
(``paper:`` of each registry entry) and ours − paper. ``metrics`` chooses the columns: any of
:data:`METRIC_COLUMNS` (PSNR, SSIM, usage, ... have no paper value: ours only). Per column one recipe is shown: the
given suite's runs, else the recipe (``recipe_id`` of the result rows) that covers most of
Table 1's methods. Several seeds are averaged (± their standard deviation). A method
without a finished run says so; nothing is filled in. Where the recipe is not the paper's
§5.1 one, the heading says how it differs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd

from ..errors import UserError, suggest
from ..registry import get_quantizer_entry, registry_document
from .compare import check_versus, compare, versus_note, versus_text

COLUMNS = {"cifar10": "CIFAR10", "celeba": "CelebA"}
# The paper's §5.1 recipe, for the heading's "differs from the paper" note.
PAPER = {"epochs": 100, "batch_size": 256, "lr": {"cifar10": 1e-2, "celeba": 1e-4},
         "train_images": {"cifar10": 50000}, "test_images": {"cifar10": 10000}, "num_codes": 1024}


# metric -> (column label, scale, digits, the paper's key in registry.yaml or None)
METRIC_COLUMNS = {"mse": ("MSE", 1e3, 2, "mse_e3"), "perplexity": ("ppl", 1.0, 1, "perplexity"),
                  "psnr": ("PSNR", 1.0, 2, None), "ssim": ("SSIM", 1.0, 4, None), "usage": ("usage", 1.0, 3, None),
                  "code_perplexity": ("code ppl", 1.0, 1, None), "codes_used": ("codes used", 1.0, 0, None),
                  # what a run cost: training images/s (all ranks) and the run's wall time in minutes
                  "images_per_s": ("img/s", 1.0, 0, None), "wall_s": ("minutes", 1 / 60, 1, None)}
# code_perplexity beside the paper's perplexity: a soft q(c|x) can read 1024 while one code is used.
DEFAULT_METRICS = ("mse", "perplexity", "code_perplexity")


def check_metrics(metrics: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The metric names for :func:`build_table1`, each known, in order, once."""
    unknown = [m for m in metrics if m not in METRIC_COLUMNS]
    if unknown or not metrics:
        raise UserError(f"unknown metric {unknown[0]!r}{suggest(unknown[0], METRIC_COLUMNS)}" if unknown
                        else f"no metrics given; choose from {', '.join(METRIC_COLUMNS)}")
    return tuple(dict.fromkeys(metrics))


@dataclass
class Table1:
    frame: pd.DataFrame  # one row per Table 1 method, flat columns
    headings: dict[str, str] = field(default_factory=dict)  # column -> recipe note
    metrics: tuple[str, ...] = DEFAULT_METRICS
    versus: str | None = None

    def title(self) -> str:
        long = {"mse": "MSE (x1e-3)", "psnr": "PSNR (dB)", "perplexity": "perplexity",
                "code_perplexity": "code perplexity (of the argmax codes)",
                "images_per_s": "training images/s", "wall_s": "minutes per run"}
        names = ", ".join(long.get(m, METRIC_COLUMNS[m][0]) for m in self.metrics)
        lines = [f"Table 1 (GM-VQ paper) rows: test {names}; ours beside the paper's where it reports one; "
                 "mean ± std (n) over seeds"]
        if self.versus:
            lines.append(versus_note(self.versus))
        lines += [f"{COLUMNS[d]}: {note}" for d, note in self.headings.items()]
        return "\n".join(lines)


def table1_methods() -> list[tuple[str, str]]:
    """(quantizer name, Table 1 row label) in the paper's order."""
    return [(name, spec["table1_row"]) for name, spec in registry_document()["quantizers"].items()
            if spec.get("table1_row")]


def recipe_differences(row: pd.Series, dataset: str) -> list[str]:
    """How a run's recipe differs from the paper's §5.1 one (empty: it is the paper's)."""
    cfg = json.loads(row["config"])
    diffs = []
    if cfg["data"]["name"] != dataset:
        diffs.append(f"images from {row['recipe'].split(':')[0]}")
    if row["epochs"] != PAPER["epochs"] or cfg["train"].get("max_steps"):
        diffs.append(f"{row['steps']} steps = {row['epochs']} epoch(s) (paper: {PAPER['epochs']} epochs)")
    for key in ("train_images", "test_images"):
        expected = PAPER[key].get(dataset)
        if expected and row[key] != expected:
            diffs.append(f"{row[key]} {key.split('_')[0]} images (paper: {expected})")
    if cfg["data"].get("limit") or cfg["data"].get("test_limit"):
        diffs.append("a subset of the images (data.limit / data.test_limit)")
    if row["batch_size"] != PAPER["batch_size"]:
        diffs.append(f"batch {row['batch_size']} (paper: {PAPER['batch_size']})")
    if abs(row["lr"] - PAPER["lr"][dataset]) > 1e-12:
        diffs.append(f"lr {row['lr']:g} (paper: {PAPER['lr'][dataset]:g})")
    if row["num_codes"] != PAPER["num_codes"]:
        diffs.append(f"{row['num_codes']} codes (paper: {PAPER['num_codes']})")
    return list(dict.fromkeys(diffs))


def _pick_recipe(rows: pd.DataFrame, names: set[str]) -> str | None:
    """The recipe covering most Table 1 methods (ties: the most recently finished)."""
    done = rows[(rows["status"] == "finished") & rows["quantizer"].isin(names)]
    if done.empty:
        return None
    cover = done.groupby("recipe_id").agg(n=("quantizer", "nunique"), last=("finished_at", "max"))
    return cover.sort_values(["n", "last"], ascending=False).index[0]


def mean_std_cell(values: pd.Series, scale: float, digits: int) -> tuple[float | None, str]:
    if values.empty:
        return None, ""
    mean = float(values.mean()) * scale
    text = f"{mean:.{digits}f}"
    if len(values) > 1:
        text += f" ±{float(values.std()) * scale:.{digits}f} (n={len(values)})"
    return mean, text


def results_seeds(results: pd.DataFrame) -> set[int]:
    """The seeds that rows were run with (a suite's tables include runs made with ``--seeds``)."""
    return {int(s) for s in results["seed"].dropna()} if "seed" in results else set()


def build_table1(results: pd.DataFrame, suite: str | None = None,
                 metrics: tuple[str, ...] = DEFAULT_METRICS, versus: str | None = None) -> Table1:
    """Table 1 from merged result rows (:func:`vqbench.rows.load_results`), ``metrics`` as columns;
    with ``versus``, each method's difference from that one, marked when within noise."""
    metrics = check_metrics(metrics)
    methods = table1_methods()
    if suite is not None:  # a suite of a few Table 1 methods (an ablation) shows those rows, in Table 1's order
        from .suite import suite_hashes, suite_spec

        in_suite = set(suite_spec(suite)["quantizers"])
        methods = [(n, label) for n, label in methods if n in in_suite]
    names = {n for n, _ in methods}
    check_versus(versus, [n for n, _ in methods])
    chosen: dict[str, pd.DataFrame] = {}
    headings: dict[str, str] = {}
    if "eval_split" in results:  # Table 1 is of test metrics: runs evaluated on validation images are tuning
        results = results[results["eval_split"].fillna("test") == "test"]
    if "paper_dataset" not in results:
        results = results.assign(paper_dataset=None)
    if suite is not None:
        results = results[results["config_hash"].isin(suite_hashes(suite, extra_seeds=results_seeds(results)))]
    for dataset in COLUMNS:
        rows = results[results["paper_dataset"] == dataset]
        recipe = _pick_recipe(rows, names)
        if recipe is None:
            chosen[dataset] = rows.iloc[0:0]
            headings[dataset] = "no finished runs" + (f" of suite {suite}" if suite else "")
            continue
        rows = rows[rows["recipe_id"] == recipe]
        chosen[dataset] = rows
        sample = rows[rows["status"] == "finished"].iloc[-1]
        diffs = recipe_differences(sample, dataset)
        recipe = f"{sample['recipe']}, model {sample['model']}" if isinstance(sample.get("model"), str) else sample["recipe"]
        headings[dataset] = (f"the paper's recipe ({recipe})" if not diffs else
                             f"NOT the paper's recipe: {'; '.join(diffs)} [{recipe}]")

    # A suite's table shows the Table 1 columns it has runs for (a CIFAR-10 suite: no CelebA column).
    columns = {d: c for d, c in COLUMNS.items() if suite is None or len(chosen[d])} or dict(COLUMNS)
    headings = {d: h for d, h in headings.items() if d in columns}
    records = []
    for name, label in methods:
        paper = get_quantizer_entry(name).paper
        record: dict[str, object] = {"method": label, "quantizer": name}
        for dataset, col in columns.items():
            rows = chosen[dataset]
            mine = rows[rows["quantizer"] == name]
            done = mine[mine["status"] == "finished"]
            ref = paper.get(dataset, {})
            for metric in metrics:
                label, scale, digits, key = METRIC_COLUMNS[metric]
                values = done[metric].dropna() if metric in done else done.iloc[0:0, 0]  # rows from before it: none
                mean, text = mean_std_cell(values, scale, digits)
                if done.empty:
                    text = "failed" if len(mine) else "no run"
                elif values.empty:
                    text = "n/a"
                record[f"{col} {label}"] = text
                if key is not None:
                    record[f"{col} {label} paper"] = ref.get(key)
                    record[f"{col} {label} diff"] = None if mean is None or key not in ref else round(mean - ref[key], digits)
                if versus is not None:
                    theirs = rows[(rows["quantizer"] == versus) & (rows["status"] == "finished")]
                    tested = name != versus and not values.empty and metric in theirs and theirs[metric].notna().any()
                    record[f"{col} {label} vs {versus}"] = (versus_text(compare(values, theirs[metric]), scale, digits)
                                                           if tested else "")
        records.append(record)
    return Table1(pd.DataFrame(records), headings, metrics, versus)


def to_markdown(table: Table1) -> str:
    frame = table.frame.drop(columns=["quantizer"])
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" if c == "method" else "---:" for c in frame.columns) + "|"
    body = []
    for _, row in frame.iterrows():
        cells = [_format(c, v) for c, v in row.items()]
        body.append("| " + " | ".join(cells) + " |")
    notes = "\n".join(f"> {line}" for line in table.title().splitlines())
    return "\n".join([notes, "", header, rule, *body])


def _format(column: str, value: object) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if not isinstance(value, (int, float)):
        return str(value)
    digits = 2 if "MSE" in column else 1  # the paper's precision
    return f"{value:+.{digits}f}" if "diff" in column else f"{value:.{digits}f}"


def to_csv(table: Table1) -> str:
    return table.frame.to_csv(index=False)
