"""Bootstrap intervals over seeds and the paper's findings as paired comparisons between grid settings.

Every setting of a sweep is run on the same seeds (same split, same subclass orders, same detector seed), so two
settings are compared paired: the per-seed differences are resampled over seeds (scipy's paired bootstrap, 95%
percentile interval). A finding is *reproduced* when its interval excludes zero in the paper's direction, *not
reproduced* when it excludes zero in the other direction, and *inconclusive* otherwise (or with fewer than
`MIN_SEEDS` seeds).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from omnimm.deps import require

MIN_SEEDS = 5
CONFIDENCE = 0.95


def interval(values: Sequence[float], *, resamples: int = 10_000, seed: int = 0) -> dict[str, float] | None:
    """Mean and 95% percentile-bootstrap interval of the mean over seeds; None without values."""
    data = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(data):
        return None
    mean = float(np.mean(data))
    if len(data) == 1 or np.all(data == data[0]):  # no spread: the interval is the point
        return {"mean": mean, "low": mean, "high": mean, "n": len(data)}
    stats = require("scipy.stats", extra="fakenews", purpose="bootstrap intervals")
    result = stats.bootstrap(
        (data,), np.mean, n_resamples=resamples, confidence_level=CONFIDENCE, method="percentile",
        rng=np.random.default_rng(seed),
    )  # fmt: skip
    low, high = result.confidence_interval
    return {"mean": mean, "low": float(low), "high": float(high), "n": len(data)}


def paired_interval(
    a: Sequence[float | None], b: Sequence[float | None], *, resamples: int = 10_000, seed: int = 0
) -> dict[str, float] | None:
    """Mean of a - b and its paired bootstrap interval (pairs with a missing side are left out)."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    return interval([x - y for x, y in pairs], resamples=resamples, seed=seed)


def verdict(difference: dict[str, float] | None, direction: int) -> str:
    """'reproduced' / 'not reproduced' / 'inconclusive' for a difference the paper expects to have sign `direction`."""
    if difference is None or difference["n"] < MIN_SEEDS:
        return "inconclusive"
    if difference["low"] > 0 or difference["high"] < 0:
        return "reproduced" if (difference["low"] > 0) == (direction > 0) else "not reproduced"
    return "inconclusive"


@dataclass(frozen=True)
class Side:
    phase: str
    share: float | str  # a share, or "first-above-0": the smallest share above 0 in the grid
    subclasses: tuple[str, ...]

    def describe(self, shares: Sequence[float]) -> str:
        return f"{self.phase} at MF share {_share(self.share, shares):g}, {'+'.join(self.subclasses)} accuracy"


@dataclass(frozen=True)
class Finding:
    key: str
    claim: str
    a: Side
    b: Side
    direction: int
    """The sign of a - b the paper reports."""


ALL = ("HR", "HF", "MR", "MF")
FINDINGS: tuple[Finding, ...] = (
    Finding(
        "mf-rises",
        "MF accuracy rises as soon as some MF enters training (human-legacy)",
        Side("human-legacy", "first-above-0", ("MF",)),
        Side("human-legacy", 0.0, ("MF",)),
        +1,
    ),
    Finding(
        "mr-falls",
        "MR accuracy falls when the fake class is machine-written: machine-written = fake (human-legacy)",
        Side("human-legacy", 1.0, ("MR",)),
        Side("human-legacy", 0.0, ("MR",)),
        -1,
    ),
    Finding(
        "transfer",
        "human-trained detectors transfer to machine text better than machine-trained ones to human text",
        Side("human-legacy", 0.0, ("MR", "MF")),
        Side("machine-dominance", 1.0, ("HR", "HF")),
        +1,
    ),
    Finding(
        "third-vs-0",
        "a one-third MF share balances the four subclasses better than no MF (coexistence)",
        Side("coexistence", 0.33, ALL),
        Side("coexistence", 0.0, ALL),
        +1,
    ),
    Finding(
        "third-vs-1",
        "a one-third MF share balances the four subclasses better than an all-MF fake class (coexistence)",
        Side("coexistence", 0.33, ALL),
        Side("coexistence", 1.0, ALL),
        +1,
    ),
)


def _share(share: float | str, shares: Sequence[float]) -> float:
    if share == "first-above-0":
        above = sorted(s for s in shares if s > 0)
        return above[0] if above else float("nan")
    return float(share)


def _side_values(rows: dict[tuple, dict[str, Any]], side: Side, shares: Sequence[float], seeds: Sequence[int]):
    share = _share(side.share, shares)
    values = []
    for seed in seeds:
        row = rows.get((side.phase, share, seed))
        accuracies = [row["subclass_accuracy"][s] for s in side.subclasses] if row else [None]
        values.append(None if None in accuracies else statistics.mean(accuracies))
    return values


def evaluate_findings(rows: Sequence[dict[str, Any]], *, resamples: int = 10_000) -> list[dict[str, Any]]:
    """Each finding of `FINDINGS` the grid of `rows` (one detector) can answer: both sides, the paired difference
    with its interval, and the verdict."""
    indexed = {(r["phase"], r["machine_fake_share"], r["seed"]): r for r in rows}
    shares = sorted({r["machine_fake_share"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    out = []
    for finding in FINDINGS:
        a, b = (_side_values(indexed, side, shares, seeds) for side in (finding.a, finding.b))
        if all(v is None for v in a) or all(v is None for v in b):
            continue
        difference = paired_interval(a, b, resamples=resamples)
        out.append(
            {
                "key": finding.key,
                "claim": finding.claim,
                "a": finding.a.describe(shares),
                "b": finding.b.describe(shares),
                "direction": finding.direction,
                "a_mean": interval(a, resamples=resamples),
                "b_mean": interval(b, resamples=resamples),
                "difference": difference,
                "verdict": verdict(difference, finding.direction),
            }
        )
    return out
