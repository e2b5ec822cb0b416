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

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omnimm.errors import BuildError, StoreError
from omnimm.registry import encoders
from omnimm_plugins.simct.classifier import ConsistencyClassifier
from omnimm_plugins.simct.configs import GateConfig
from omnimm_plugins.simct.features import FEATURES, pair_features
from omnimm_plugins.simct.records import StageResponses
from omnimm_plugins.simct.stats import Comparison, one_sample_test

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
UNMATCHED_EXAMPLES = 5
"""Prompts of one side only shown by name (stderr, report); all of them are counted, and listed in report.json."""


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
    response_wise: dict[str, Any] | None = None
    """With a classifier: the inconsistency rate of cross- and within-stage pairs, with intervals."""
    fallback: str | None = None
    """Without a classifier: says that a single metric scores the pairs."""
    unseen_query_types: dict[str, int] = field(default_factory=dict)
    """Query type -> prompts of that type the classifier never saw in training."""

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
            "unmatched": {
                side: {"count": len(prompts), "examples": prompts[:UNMATCHED_EXAMPLES]}
                for side, prompts in (("only_in_a", self.only_in_a), ("only_in_b", self.only_in_b))
            },
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "prompts": self.prompts,
            "least_consistent": self.least_consistent,
            "response_wise": self.response_wise,
            "fallback": self.fallback,
            "unseen_query_types": self.unseen_query_types,
            "within_scores": self.within_scores,
            "cross_scores": self.cross_scores,
        }


def _pairs(a: list[str], b: list[str] | None, limit: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Cross pairs (a x b) or within pairs (two different samples of a), at most `limit`, seeded.

    With more pairs than `limit`, a random cover comes first (each sample paired once: `max(len(a), len(b))` cross
    or `ceil(len(a) / 2)` within pairs) and uniform draws without replacement fill the rest, so every sample is
    compared whenever `limit` allows it. Both steps are symmetric under relabelling the samples, so every pair has
    the same chance, `limit / all pairs`, to be chosen.
    """
    if b is None and len(a) == 1:
        return [(a[0], a[0])]  # one response: the stage compared with itself
    if b is not None:
        total = len(a) * len(b)
        if total <= limit:
            return [(x, y) for x in a for y in b]
        first, second = rng.permutation(len(a)), rng.permutation(len(b))
        cover = [int(first[t % len(a)]) * len(b) + int(second[t % len(b)]) for t in range(max(len(a), len(b)))]
        chosen = _fill(cover, total, limit, rng)
        return [(a[i // len(b)], b[i % len(b)]) for i in chosen]
    rows, columns = np.triu_indices(len(a), k=1)  # every unordered pair, as flat positions 0..total-1
    total = len(rows)
    if total <= limit:
        return [(a[i], a[j]) for i, j in zip(rows.tolist(), columns.tolist(), strict=True)]
    n = len(a)

    def position(x: int, y: int) -> int:  # flat index of the pair (i < j) in triu_indices' row-major order
        i, j = min(x, y), max(x, y)
        return i * n - i * (i + 1) // 2 + j - i - 1

    order = rng.permutation(len(a)).tolist()
    couples = [(order[t], order[t + 1]) for t in range(0, len(a) - 1, 2)]
    if len(a) % 2:
        couples.append((order[-1], order[0]))  # the odd one out joins the first
    chosen = _fill([position(x, y) for x, y in couples], total, limit, rng)
    return [(a[int(rows[k])], a[int(columns[k])]) for k in chosen]


def _fill(cover: list[int], total: int, limit: int, rng: np.random.Generator) -> list[int]:
    """`limit` distinct positions of `range(total)`: the cover (when it fits), then uniform draws from the rest."""
    if len(cover) > limit:
        return sorted(rng.choice(total, size=limit, replace=False).tolist())
    rest = np.setdiff1d(np.arange(total), cover)
    extra = rng.choice(rest, size=limit - len(cover), replace=False).tolist()
    return sorted([*cover, *extra])


def _merge(stage: StageResponses, by_id: bool) -> dict[str, tuple[str, list[str], str | None]]:
    """Matching key -> (the first prompt text with that key, all its responses, its query type)."""
    merged: dict[str, tuple[str, list[str], str | None]] = {}
    for prompt, key in stage.keys(by_id).items():
        first, responses, query_type = merged.get(key, (prompt, [], None))
        merged[key] = (first, responses + stage.responses[prompt], query_type or stage.query_types.get(prompt))
    return merged


class ConsistencyGate:
    """Evaluator `simct/gate`: `gate.evaluate(stage_a, stage_b) -> GateResult`."""

    def __init__(self, config: GateConfig) -> None:
        self.config = config
        self.classifier = ConsistencyClassifier.load(config.classifier) if config.classifier else None
        if self.classifier is not None:
            _check_features(config.classifier, self.classifier)
        encoder = _encoder_config(config, self.classifier)
        self.encoder = encoders.build(encoder) if encoder is not None else None
        self.score = config.score if config.score != "auto" else ("classifier" if self.classifier else "chrf")

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
        by_id = stage_a.has_ids and stage_b.has_ids
        a_side, b_side = _merge(stage_a, by_id), _merge(stage_b, by_id)
        keys = [key for key in a_side if key in b_side]
        only_a = [a_side[key][0] for key in a_side if key not in b_side]
        only_b = [b_side[key][0] for key in b_side if key not in a_side]
        limit, rng = self.config.max_pairs_per_prompt, np.random.default_rng(self.config.seed)
        prompts = [a_side[key][0] for key in keys]
        types = [a_side[key][2] or b_side[key][2] for key in keys]
        jobs: list[tuple[int, str, str, str]] = []  # (prompt index, kind, reference, candidate)
        for index, key in enumerate(keys):
            a, b = a_side[key][1], b_side[key][1]
            jobs += [(index, "cross", r, c) for r, c in _pairs(a, b, limit, rng)]
            jobs += [(index, "within", r, c) for r, c in _pairs(a, None, limit, rng)]
            jobs += [(index, "within", r, c) for r, c in _pairs(b, None, limit, rng)]
        job_types = [types[i] or "" for i, *_ in jobs]
        scores, contributions = (
            self._scores([(r, c) for _, _, r, c in jobs], job_types) if jobs else (np.zeros(0), None)
        )
        rows = self._per_prompt(prompts, types, jobs, scores, a_side, b_side, keys)
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
            self._least_consistent(prompts, jobs, scores, contributions),
            (stage_a.source, stage_b.source),
            {
                "alpha": self.config.alpha,
                "margin": self.config.margin,
                "score": self.score,
                "classifier": self.config.classifier,
                "matched_by": "id" if by_id else "normalised prompt text",
                "seed": self.config.seed,
            },
            response_wise=self._response_wise(jobs, scores),
            fallback=None if self.classifier is not None else _fallback_note(self.score),
            unseen_query_types=self._unseen(types),
        )

    def _response_wise(self, jobs: list[tuple[int, str, str, str]], scores: np.ndarray) -> dict[str, Any] | None:
        """With a classifier: each pair is consistent when P(consistent) >= the calibrated threshold; the share of
        inconsistent cross-stage pairs, with a 95% bootstrap interval over prompts (pairs of one prompt are not
        independent), beside the same share for within-stage pairs."""
        if self.classifier is None or not jobs:
            return None
        threshold = self.classifier.threshold
        out: dict[str, Any] = {"threshold": threshold}
        for kind in ("cross", "within"):
            per_prompt: dict[int, list[bool]] = {}
            for (index, job_kind, _, _), score in zip(jobs, scores, strict=True):
                if job_kind == kind:
                    per_prompt.setdefault(index, []).append(bool(score < threshold))
            flags = [flag for values in per_prompt.values() for flag in values]
            rate = float(np.mean(flags)) if flags else 0.0
            low, high = _cluster_interval(list(per_prompt.values()), seed=self.config.seed)
            out[kind] = {
                "pairs": len(flags),
                "inconsistent": int(sum(flags)),
                "inconsistency_rate": rate,
                "ci_low": low,
                "ci_high": high,
            }
        return out

    def _unseen(self, types: list[str | None]) -> dict[str, int]:
        """Query types of the compared prompts that the classifier was never trained on (scored as missing)."""
        if self.classifier is None:
            return {}
        known = set(self.classifier.query_types)
        unseen: dict[str, int] = {}
        for query_type in types:
            if query_type and query_type not in known:
                unseen[query_type] = unseen.get(query_type, 0) + 1
        return unseen

    def _per_prompt(self, prompts, types, jobs, scores, a_side, b_side, keys) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
        sums: dict[tuple[int, str], list[float]] = {}
        for (index, kind, _, _), score in zip(jobs, scores, strict=True):
            sums.setdefault((index, kind), []).append(float(score))
        rows = []
        for index, prompt in enumerate(prompts):
            cross, within = np.mean(sums[(index, "cross")]), np.mean(sums[(index, "within")])
            rows.append(
                {
                    "prompt": prompt,
                    "query_type": types[index],
                    "samples_a": len(a_side[keys[index]][1]),
                    "samples_b": len(b_side[keys[index]][1]),
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

    def _least_consistent(self, prompts, jobs, scores, contributions) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
        cross = [i for i, job in enumerate(jobs) if job[1] == "cross"]
        ranked = sorted(cross, key=lambda i: scores[i])[: self.config.top_pairs]
        rows = []
        for i in ranked:
            index, _, reference, candidate = jobs[i]
            row: dict[str, Any] = {
                "prompt": prompts[index],
                "response_a": reference,
                "response_b": candidate,
                "score": float(scores[i]),
            }
            if self.classifier is not None:
                row["consistent"] = bool(scores[i] >= self.classifier.threshold)
            if contributions is not None and self.classifier is not None:
                names = [*self.classifier.features, "query_type"]
                row["contributions"] = {n: float(v) for n, v in zip(names, contributions[i], strict=False)}
            rows.append(row)
        return rows


def _encoder_config(config: GateConfig, classifier: ConsistencyClassifier | None) -> Any:
    """The encoder for `embedding_cosine`: the one configured, else the one the classifier was trained with; a
    classifier that needs one it cannot get, or a different one than it was trained with, is refused."""
    needs = classifier is not None and "embedding_cosine" in classifier.features
    if not needs or classifier is None:
        return config.encoder
    trained = classifier.encoder
    if config.encoder is None:
        if trained is None:
            raise BuildError(
                "encoder",
                f"{config.classifier}: this classifier uses embedding_cosine but does not record its encoder; "
                "name it with --encoder (the gate's `encoder`)",
            )
        return trained
    given = config.encoder.model_dump(mode="json")
    if trained is not None and (given.get("name"), given.get("path")) != (trained.get("name"), trained.get("path")):
        raise BuildError(
            "encoder",
            f"{config.classifier}: trained with encoder {trained.get('name')!r}"
            f"{' at ' + str(trained.get('path')) if trained.get('path') else ''}, but the gate is given "
            f"{given.get('name')!r}{' at ' + str(given.get('path')) if given.get('path') else ''}",
        )
    return config.encoder


def _check_features(folder: str | None, classifier: ConsistencyClassifier) -> None:
    unknown = [name for name in classifier.features if name not in (*FEATURES, "embedding_cosine")]
    if unknown:
        known = ", ".join((*FEATURES, "embedding_cosine"))
        raise StoreError(f"{folder}/manifest.json: unknown feature(s) {', '.join(unknown)} (known: {known})")


def _fallback_note(score: str) -> str:
    return (
        f"no classifier given: a single metric ({score}) scores the pairs, and no per-response consistent/inconsistent "
        "decision is made (train one with `omnimm simct train` and pass --classifier)"
    )


def _cluster_interval(groups: list[list[bool]], *, seed: int, resamples: int = 2000) -> tuple[float, float]:
    """95% percentile interval of the pooled rate, resampling whole groups (prompts) with replacement."""
    if not groups:
        return 0.0, 0.0
    counts = np.array([sum(g) for g in groups], dtype=float)
    sizes = np.array([len(g) for g in groups], dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(groups), size=(resamples, len(groups)))
    rates = counts[picks].sum(axis=1) / sizes[picks].sum(axis=1)
    low, high = np.percentile(rates, [2.5, 97.5])
    return float(low), float(high)


def _p(value: float) -> str:
    return "< 1e-300" if value == 0 else f"{value:.3g}"
