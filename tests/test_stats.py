"""pqdjax.stats against scipy: Student's t, the paired interval and test; and the pairing of students."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from pqdjax import stats
from pqdjax.stages.report import paired_differences


@pytest.mark.parametrize("df", [1, 2, 4, 9, 30])
def test_t_quantile_and_p_value_match_scipy(df):
    assert stats.t_quantile(0.975, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-4)
    for t in (0.3, 1.5, 4.0):
        assert stats.t_two_sided_p(t, df) == pytest.approx(2 * scipy_stats.t.sf(t, df), rel=1e-4, abs=1e-7)


def test_paired_difference_matches_scipys_paired_t_test():
    a = np.array([0.741, 0.735, 0.752, 0.738, 0.747])
    b = np.array([0.733, 0.736, 0.741, 0.730, 0.745])
    got = stats.paired_difference(a, b)
    d = a - b
    half = scipy_stats.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
    assert got["mean"] == pytest.approx(d.mean())
    assert (got["low"], got["high"]) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-4)
    assert got["p"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue, rel=1e-3)
    assert stats.paired_difference([0.5], [0.4])["low"] is None  # one seed: no interval
    assert stats.paired_difference([0.5, 0.6], [0.4, 0.5])["p"] == 0.0  # the same difference on every seed
    assert stats.sample_std([1.0, 2.0, 3.0]) == pytest.approx(1.0)


def test_pairs_use_the_seeds_both_methods_have():
    records = [
        {"method": m, "ipc": 10, "seed": s, "test_accuracy": acc}
        for m, s, acc in (("ddoq", 0, 0.80), ("ddoq", 1, 0.82), ("ddoq", 2, 0.81), ("d4m", 0, 0.78), ("d4m", 1, 0.81))
    ]
    out = paired_differences(records, [("ddoq", "d4m")])
    cell = out["ddoq - d4m"][10]
    assert cell["seeds"] == [0, 1] and cell["mean"] == pytest.approx(0.015)
