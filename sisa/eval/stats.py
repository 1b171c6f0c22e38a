"""Statistics of results over seeds: means with confidence intervals and paired comparisons.

Every comparison in sisa's experiments is paired: two methods run on the same seeds (the same
data split, forget set and initialisation), so the per-seed differences are what vary. The
interval is Student's t on those differences (few seeds: t, not the normal approximation).
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95


def mean_ci(values, level: float = LEVEL) -> dict:
    """{"mean", "lo", "hi", "half", "std", "n"}: the mean of `values` (NaNs dropped) and its
    two-sided t confidence interval; with one value the interval is that value (half = NaN)."""
    from scipy import stats

    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    n = len(v)
    if n == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "half": float("nan"), "std": float("nan"),
                "n": 0}
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * std / np.sqrt(n)) if n > 1 else float("nan")
    if n > 1 and std == 0:
        half = 0.0
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "half": half, "std": std, "n": n}


def paired(a, b, level: float = LEVEL) -> dict:
    """a - b over the same seeds: mean difference with its t interval and the two-sided p-value of
    the paired t-test (H0: no difference). Pairs with a NaN on either side are dropped."""
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need the same seeds: {a.shape} vs {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    out = mean_ci(d, level)
    if len(d) > 1 and d.std(ddof=1) > 1e-12 * (1 + abs(d.mean())):  # else constant (up to rounding): no t-test
        out["p"] = float(stats.ttest_1samp(d, 0.0).pvalue)
    else:
        out["p"] = float("nan") if len(d) < 2 else (1.0 if d.mean() == 0 else 0.0)
    return out


def missing(v) -> bool:
    """NaN, or None (how strict JSON keeps a NaN)."""
    return v is None or bool(np.isnan(v))


def fmt(ci: dict, digits: int = 3) -> str:
    """"0.912 ± 0.004" (mean ± half-width), or the mean alone when there is no interval."""
    if ci["n"] == 0 or missing(ci["mean"]):
        return "–"
    if missing(ci["half"]):
        return f"{ci['mean']:.{digits}f}"
    return f"{ci['mean']:.{digits}f} ± {ci['half']:.{digits}f}"
