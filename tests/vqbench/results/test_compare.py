"""vqbench/results/compare.py: Welch's t-test over seeds against a closed form, and the marks."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from vqbench.errors import UserError
from vqbench.results.compare import compare, check_versus, versus_text


def _t4_two_sided_p(t: float) -> float:
    """Student's t with 4 degrees of freedom has a closed-form CDF (3 seeds against 3, equal spread)."""
    u = t * t / 4
    cdf = 0.5 + 3 / 8 * (abs(t) / math.sqrt(1 + u)) * (1 - t * t / (12 * (1 + u)))
    return 2 * (1 - cdf)


def test_welch_p_value_matches_the_closed_form_and_marks_noise():
    far = compare(pd.Series([1.0, 2.0, 3.0]), pd.Series([4.0, 5.0, 6.0]))
    t = (2.0 - 5.0) / math.sqrt(1 / 3 + 1 / 3)  # Welch: (mean a - mean b) / sqrt(var a / n + var b / n)
    assert far.diff == -3.0 and far.p == pytest.approx(_t4_two_sided_p(t), rel=1e-9) and far.n == (3, 3)
    assert far.within_noise is False and versus_text(far, 1.0, 2) == f"-3.00 (p={far.p:.2g})"
    near = compare(pd.Series([1.0, 2.0, 3.0]), pd.Series([1.5, 2.5, 3.5]))
    assert near.p == pytest.approx(_t4_two_sided_p(-0.5 / math.sqrt(2 / 3)), rel=1e-9)
    assert near.within_noise is True and versus_text(near, 1e3, 1).startswith("-500.0 ≈ (p=0.57")


def test_one_seed_or_no_spread_is_untested_not_significant():
    one = compare(pd.Series([0.010]), pd.Series([0.012, 0.013]))
    assert one.p is None and one.within_noise is None and versus_text(one, 1e3, 2) == "-2.50 (untested: n=1 vs 2)"
    flat = compare(pd.Series([1.0, 1.0]), pd.Series([1.0, 1.0]))
    assert flat.p is None and flat.diff == 0.0


def test_versus_must_be_one_of_the_table():
    check_versus("gmvq", ["vqvae", "gmvq"])
    with pytest.raises(UserError, match="did you mean 'gmvq'"):
        check_versus("gmvqq", ["vqvae", "gmvq"])


def test_a_side_without_spread_is_tested_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's "Precision loss occurred" would raise here
        cmp = compare(pd.Series([1024.0, 1024.0, 1024.0]), pd.Series([100.0, 150.0, 120.0]))
    assert cmp.diff == pytest.approx(1024 - 370 / 3) and cmp.p is not None and cmp.p < 0.05
