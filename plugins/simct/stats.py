"""Model-wise statistics: Student's t-tests (paired and independent), effect sizes, confidence intervals, and
TOST equivalence tests, on scipy.

A t-test that finds no significant difference is not evidence that two stages are the same (small samples find
nothing); the equivalence test is: it shows the mean difference lies within `±margin` with confidence `1 - alpha`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Comparison:
    """Result of comparing scores: a difference test and an equivalence test."""

    design: str
    n: int
    mean_difference: float
    t: float
    df: float
    p_value: float
    ci_low: float
    ci_high: float
    effect_size: float
    tost_p_value: float
    margin: float
    alpha: float

    @property
    def significant(self) -> bool:
        """The difference from 0 is significant at `alpha`."""
        return self.p_value < self.alpha

    @property
    def equivalent(self) -> bool:
        """Both one-sided tests reject at `alpha`: the difference is within `±margin`."""
        return self.tost_p_value < self.alpha

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "significant": self.significant, "equivalent": self.equivalent}


def _scipy_t() -> Any:
    from omnimm.deps import require

    return require("scipy.stats", extra="simct", purpose="t-tests").t


def _from_moments(
    design: str, mean: float, se: float, df: float, n: int, effect: float, margin: float, alpha: float
) -> Comparison:
    t_dist = _scipy_t()
    if se == 0:  # every difference identical: the tests degenerate to comparing the constant with 0 and the margin
        p = 1.0 if mean == 0 else 0.0
        tost = 0.0 if abs(mean) < margin else 1.0
        return Comparison(
            design,
            n,
            mean,
            math.copysign(math.inf, mean) if mean else 0.0,
            df,
            p,
            mean,
            mean,
            effect,
            tost,
            margin,
            alpha,
        )
    t = mean / se
    p = float(2 * t_dist.sf(abs(t), df))
    half = float(t_dist.ppf(1 - alpha / 2, df)) * se
    lower_p = float(t_dist.sf((mean + margin) / se, df))  # H0: difference <= -margin
    upper_p = float(t_dist.cdf((mean - margin) / se, df))  # H0: difference >= +margin
    return Comparison(design, n, mean, t, df, p, mean - half, mean + half, effect, max(lower_p, upper_p), margin, alpha)


def paired_test(a: np.ndarray, b: np.ndarray, *, alpha: float = 0.05, margin: float = 0.05) -> Comparison:
    """Student's paired t-test of `b - a` (as `scipy.stats.ttest_rel`), Cohen's d_z, CI and TOST."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need two 1-D arrays of one length, got shapes {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs, got {len(a)}")
    return one_sample_test(b - a, alpha=alpha, margin=margin, design="paired")


def one_sample_test(
    differences: np.ndarray, *, alpha: float = 0.05, margin: float = 0.05, design: str = "one-sample"
) -> Comparison:
    """t-test of `mean(differences) = 0`, d_z = mean / sd, CI and TOST for `|mean| < margin`."""
    d = np.asarray(differences, dtype=float)
    n = len(d)
    if n < 2:
        raise ValueError(f"a t-test needs at least 2 values, got {n}")
    sd = float(d.std(ddof=1))
    effect = float(d.mean() / sd) if sd > 0 else (0.0 if d.mean() == 0 else math.copysign(math.inf, d.mean()))
    return _from_moments(design, float(d.mean()), sd / math.sqrt(n), n - 1, n, effect, margin, alpha)


def independent_test(a: np.ndarray, b: np.ndarray, *, alpha: float = 0.05, margin: float = 0.05) -> Comparison:
    """Student's two-sample t-test of `mean(b) - mean(a)` with pooled variance (as `scipy.stats.ttest_ind`),
    Cohen's d (pooled SD), CI and TOST."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"an independent t-test needs at least 2 values per group, got {len(a)} and {len(b)}")
    df = len(a) + len(b) - 2
    pooled = ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / df
    difference = float(b.mean() - a.mean())
    se = math.sqrt(pooled * (1 / len(a) + 1 / len(b)))
    effect = (
        difference / math.sqrt(pooled)
        if pooled > 0
        else (0.0 if difference == 0 else math.copysign(math.inf, difference))
    )
    return _from_moments("independent", difference, se, df, len(a) + len(b), effect, margin, alpha)
