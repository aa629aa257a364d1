"""Which differences between two quantizers exceed run-to-run noise.

The noise test is Welch's two-sample t-test over seeds (:func:`scipy.stats.ttest_ind` with
``equal_var=False``), two-sided at 5 %: a difference is *within noise* when p ≥ 0.05.

- Unpaired, because a seed does not mean the same thing to two quantizers here: the
  quantizer draws its parameters before the autoencoder does (``training.setup.build_model``),
  so seed s gives different encoder weights to different quantizers, and pairing runs by
  seed would pretend they share a draw they do not.
- Welch, because the methods' spreads differ (a collapsing baseline varies far more than
  a stable one), so the variances are not pooled.
- Not a bootstrap interval: with three seeds a bootstrap has ten distinct resamples, too
  few for an interval to mean anything.

With n = 3 against 3 the test only sees large differences; "within noise" means "not shown
to differ by these seeds", not "equal".
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import pandas as pd

from ..errors import UserError, suggest

ALPHA = 0.05


@dataclass(frozen=True)
class Comparison:
    diff: float  # mean(ours) - mean(reference), in the metric's own units
    p: float | None  # None: fewer than two seeds on a side, or both sides without spread
    n: tuple[int, int]

    @property
    def within_noise(self) -> bool | None:
        return None if self.p is None else self.p >= ALPHA


def compare(values: pd.Series, reference: pd.Series) -> Comparison:
    """Welch's t-test of one method's per-seed values against the reference's."""
    from scipy.stats import ttest_ind

    a, b = values.dropna().astype(float), reference.dropna().astype(float)
    diff = float(a.mean() - b.mean())
    p = None
    if len(a) >= 2 and len(b) >= 2 and (a.std() > 0 or b.std() > 0):
        with warnings.catch_warnings():
            # one side without spread (every seed used all 1024 codes) is an exact answer, not
            # the "nearly identical data" scipy warns of; the other side's spread carries the test
            warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
            p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return Comparison(diff, None if p is None or math.isnan(p) else p, (len(a), len(b)))


def versus_text(cmp: Comparison, scale: float, digits: int) -> str:
    """``+1.23 (p=0.004)`` when it differs, ``+0.10 ≈ (p=0.41)`` within noise, or why untested."""
    text = f"{cmp.diff * scale:+.{digits}f}"
    if cmp.p is None:
        return f"{text} (untested: n={cmp.n[0]} vs {cmp.n[1]})"
    return f"{text}{' ≈' if cmp.within_noise else ''} (p={cmp.p:.2g})"


def check_versus(versus: str | None, names: list[str]) -> None:
    if versus is not None and versus not in names:
        raise UserError(f"--versus {versus!r} is not among the table's quantizers{suggest(versus, names)}")


def versus_note(versus: str) -> str:
    """The table heading's line explaining the ``vs`` columns."""
    return (f"vs {versus}: difference of means; ≈ marks a difference within noise "
            f"(Welch's t-test over seeds, p ≥ {ALPHA}); untested with fewer than 2 seeds a side")
