"""`simct/gate`: PASS / FAIL / INCONCLUSIVE for a new stage of an LLM service, from the two stages' responses.

Per prompt, the gate compares the new stage's responses with the old stage's (*cross* pairs) and each stage's
responses with each other (*within* pairs; a stage with one response per prompt is compared with itself). For a
stage that behaves like the old one, cross pairs look like within pairs. With `d = mean cross score - mean within
score` per prompt:

- **PASS**: the equivalence test (TOST) shows `|mean d| < margin` at level alpha;
- **FAIL**: `mean d < -margin` and the t-test finds the difference significant at level alpha;
- **INCONCLUSIVE**: anything else (too few prompts, or a confidence interval that straddles the margin).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omnimm.registry import encoders
from omnimm_plugins.simct.classifier import ConsistencyClassifier
from omnimm_plugins.simct.configs import GateConfig
from omnimm_plugins.simct.features import pair_features
from omnimm_plugins.simct.records import StageResponses
from omnimm_plugins.simct.stats import Comparison, one_sample_test

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"


@dataclass
class GateResult:
    """The verdict and its evidence."""

    verdict: str
    reason: str
    score: str
    comparison: Comparison | None
    prompts: list[dict[str, Any]]
    only_in_a: list[str]
    only_in_b: list[str]
    within_scores: list[float]
    cross_scores: list[float]
    least_consistent: list[dict[str, Any]]
    sources: tuple[str, str]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "score": self.score,
            "stage_a": self.sources[0],
            "stage_b": self.sources[1],
            "settings": self.settings,
            "test": self.comparison.to_dict() if self.comparison else None,
            "prompts_compared": len(self.prompts),
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "prompts": self.prompts,
            "least_consistent": self.least_consistent,
            "within_scores": self.within_scores,
            "cross_scores": self.cross_scores,
        }


def _pairs(a: list[str], b: list[str] | None, limit: int) -> list[tuple[str, str]]:
    if b is not None:
        return list(itertools.islice(itertools.product(a, b), limit))
    if len(a) == 1:
        return [(a[0], a[0])]  # one response: the stage compared with itself
    return list(itertools.islice(itertools.combinations(a, 2), limit))


class ConsistencyGate:
    """Evaluator `simct/gate`: `gate.evaluate(stage_a, stage_b) -> GateResult`."""

    def __init__(self, config: GateConfig) -> None:
        self.config = config
        self.classifier = ConsistencyClassifier.load(config.classifier) if config.classifier else None
        self.encoder = encoders.build(config.encoder) if config.encoder is not None else None
        self.score = config.score if config.score != "auto" else ("classifier" if self.classifier else "chrf")
        if self.classifier is not None and "embedding_cosine" in self.classifier.features and self.encoder is None:
            raise ValueError("this classifier uses embedding_cosine: configure the gate's `encoder`")

    def _scores(self, pairs: list[tuple[str, str]], query_types: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        values, names = pair_features(
            pairs, encoder=self.encoder, segmentation=self.config.segmentation, workers=self.config.workers
        )
        if self.score != "classifier":
            return values[:, names.index(self.score)], None
        assert self.classifier is not None
        columns = [names.index(name) for name in self.classifier.features]
        matrix = values[:, columns]
        return self.classifier.predict_proba(matrix, query_types), self.classifier.contributions(matrix, query_types)

    def evaluate(self, stage_a: StageResponses, stage_b: StageResponses) -> GateResult:
        common = [p for p in stage_a.prompts if p in stage_b.responses]
        only_a = [p for p in stage_a.prompts if p not in stage_b.responses]
        only_b = [p for p in stage_b.prompts if p not in stage_a.responses]
        limit = self.config.max_pairs_per_prompt
        jobs: list[tuple[int, str, str, str]] = []  # (prompt index, kind, reference, candidate)
        for index, prompt in enumerate(common):
            a, b = stage_a.responses[prompt], stage_b.responses[prompt]
            jobs += [(index, "cross", r, c) for r, c in _pairs(a, b, limit)]
            jobs += [(index, "within", r, c) for r, c in _pairs(a, None, limit)]
            jobs += [(index, "within", r, c) for r, c in _pairs(b, None, limit)]
        types = [stage_a.query_types.get(common[i]) or stage_b.query_types.get(common[i]) or "" for i, *_ in jobs]
        scores, contributions = self._scores([(r, c) for _, _, r, c in jobs], types) if jobs else (np.zeros(0), None)
        rows = self._per_prompt(common, jobs, scores, stage_a, stage_b)
        comparison, verdict, reason = self._decide(rows, len(only_a) + len(only_b))
        return GateResult(
            verdict,
            reason,
            self.score,
            comparison,
            rows,
            only_a,
            only_b,
            [float(s) for (_, kind, *_), s in zip(jobs, scores, strict=True) if kind == "within"],
            [float(s) for (_, kind, *_), s in zip(jobs, scores, strict=True) if kind == "cross"],
            self._least_consistent(common, jobs, scores, contributions),
            (stage_a.source, stage_b.source),
            {
                "alpha": self.config.alpha,
                "margin": self.config.margin,
                "score": self.score,
                "classifier": self.config.classifier,
            },
        )

    def _per_prompt(self, common, jobs, scores, stage_a, stage_b) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
        sums: dict[tuple[int, str], list[float]] = {}
        for (index, kind, _, _), score in zip(jobs, scores, strict=True):
            sums.setdefault((index, kind), []).append(float(score))
        rows = []
        for index, prompt in enumerate(common):
            cross, within = np.mean(sums[(index, "cross")]), np.mean(sums[(index, "within")])
            rows.append(
                {
                    "prompt": prompt,
                    "query_type": stage_a.query_types.get(prompt) or stage_b.query_types.get(prompt),
                    "samples_a": len(stage_a.responses[prompt]),
                    "samples_b": len(stage_b.responses[prompt]),
                    "within": float(within),
                    "cross": float(cross),
                    "difference": float(cross - within),
                }
            )
        return rows

    def _decide(self, rows: list[dict[str, Any]], unmatched: int) -> tuple[Comparison | None, str, str]:
        config = self.config
        note = f"; {unmatched} prompt(s) appear in one file only (listed in the report)" if unmatched else ""
        if len(rows) < config.min_prompts:
            return (
                None,
                INCONCLUSIVE,
                f"only {len(rows)} prompt(s) in common; at least {config.min_prompts} needed{note}",
            )
        test = one_sample_test(
            np.array([r["difference"] for r in rows]), alpha=config.alpha, margin=config.margin, design="cross-within"
        )
        level = f"{1 - 2 * config.alpha:.0%}"
        if test.equivalent:
            return (
                test,
                PASS,
                (
                    f"cross-stage pairs score like within-stage pairs: mean difference {test.mean_difference:+.4f} is "
                    f"within ±{config.margin} (TOST p = {_p(test.tost_p_value)}, {level} equivalence){note}"
                ),
            )
        if test.significant and test.mean_difference < -config.margin:
            return (
                test,
                FAIL,
                (
                    f"cross-stage pairs score lower than within-stage pairs by {-test.mean_difference:.4f} > margin "
                    f"{config.margin} (t = {test.t:.2f}, p = {_p(test.p_value)}, n = {test.n} prompts){note}"
                ),
            )
        return (
            test,
            INCONCLUSIVE,
            (
                f"mean difference {test.mean_difference:+.4f}, 95% CI [{test.ci_low:+.4f}, {test.ci_high:+.4f}] is "
                f"neither inside ±{config.margin} nor clearly beyond it; more prompts or samples would decide{note}"
            ),
        )

    def _least_consistent(self, common, jobs, scores, contributions) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
        cross = [i for i, job in enumerate(jobs) if job[1] == "cross"]
        ranked = sorted(cross, key=lambda i: scores[i])[: self.config.top_pairs]
        rows = []
        for i in ranked:
            index, _, reference, candidate = jobs[i]
            row: dict[str, Any] = {
                "prompt": common[index],
                "response_a": reference,
                "response_b": candidate,
                "score": float(scores[i]),
            }
            if contributions is not None and self.classifier is not None:
                names = [*self.classifier.features, "query_type"]
                row["contributions"] = {n: float(v) for n, v in zip(names, contributions[i], strict=False)}
            rows.append(row)
        return rows


def _p(value: float) -> str:
    return "< 1e-300" if value == 0 else f"{value:.3g}"
