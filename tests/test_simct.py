"""simct: the classifier, the statistics, the gate and its CLI (features and tokenisation: test_simct_text.py)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from omnimm import ConfigError, evaluators, llms
from omnimm.errors import StoreError
from omnimm_plugins.simct.classifier import ConsistencyClassifier, best_threshold
from omnimm_plugins.simct.features import FEATURES, extract
from omnimm_plugins.simct.records import StageResponses, read_responses, write_responses
from omnimm_plugins.simct.scenarios import perturb, respond
from omnimm_plugins.simct.stats import independent_test, one_sample_test, paired_test

from .conftest import SHARED, requires_shared

# -- classifier ----------------------------------------------------------------------------------------------------


def synthetic_pairs(n: int, seed: int = 0):
    rng = random.Random(seed)
    vocabulary = "red green blue cat dog bird runs jumps sleeps eats fish bread quickly slowly today".split()
    pairs, labels, types = [], [], []
    for index in range(n):
        sentence = " ".join(rng.choice(vocabulary) for _ in range(8))
        if index % 2:
            other = sentence.split()
            other[rng.randrange(8)] = rng.choice(vocabulary)
            pairs.append((sentence, " ".join(other)))
            labels.append(1)
        else:
            pairs.append((sentence, " ".join(rng.choice(vocabulary) for _ in range(8))))
            labels.append(0)
        types.append("chat" if index % 3 else "code")
    return pairs, np.array(labels), types


@pytest.fixture(scope="module")
def classifier():
    pairs, labels, types = synthetic_pairs(400)
    return ConsistencyClassifier.fit(extract(pairs, workers=1), labels, types, feature_names=list(FEATURES), folds=3)


def test_classifier_learns_saves_and_loads(classifier, tmp_path):
    pairs, labels, types = synthetic_pairs(200, seed=1)
    features = extract(pairs, workers=1)
    probabilities = classifier.predict_proba(features, types)
    accuracy = ((probabilities >= classifier.threshold) == labels).mean()
    assert accuracy > 0.9, f"held-out accuracy {accuracy:.3f} (about 0.99 on this separable toy task)"
    assert classifier.metrics["cv_auc"] > 0.9 and 0 < classifier.threshold < 1, classifier.metrics
    folder = classifier.save(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.txt"]
    assert (folder / "model.txt").read_text().startswith("tree")  # LightGBM's text format
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["features"] == list(FEATURES) and manifest["query_types"] == ["chat", "code"]
    assert set(manifest["versions"]) == {"lightgbm", "omnimm"}
    loaded = ConsistencyClassifier.load(folder)
    assert np.allclose(loaded.predict_proba(features, types), probabilities)
    assert loaded.threshold == classifier.threshold


def test_contributions_add_up_to_the_log_odds(classifier):
    pairs, _, types = synthetic_pairs(20, seed=2)
    features = extract(pairs, workers=1)
    contributions = classifier.contributions(features, types)
    assert contributions.shape == (20, len(FEATURES) + 2)  # features, query type, bias
    logits = np.log(classifier.predict_proba(features, types) / (1 - classifier.predict_proba(features, types)))
    assert np.allclose(contributions.sum(axis=1), logits, atol=1e-6)


def test_classifier_input_checks(classifier, tmp_path):
    with pytest.raises(ValueError, match=r"expected features of shape \[pairs, 8\]"):
        classifier.predict_proba(np.zeros((3, 5)))
    with pytest.raises(StoreError, match=r"not a saved simct classifier: model\.txt is missing"):
        ConsistencyClassifier.load(tmp_path)


def test_best_threshold_maximises_balanced_accuracy():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.4, 0.8, 0.9])
    threshold = best_threshold(labels, scores)
    assert 0.2 < threshold < 0.4 or 0.6 < threshold < 0.8


# -- statistics ----------------------------------------------------------------------------------------------------


def test_t_tests_match_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    a = rng.normal(0.6, 0.1, 30)
    b = a + rng.normal(0.02, 0.05, 30)
    paired, reference = paired_test(a, b), stats.ttest_rel(b, a)
    assert paired.t == pytest.approx(reference.statistic) and paired.p_value == pytest.approx(reference.pvalue)
    interval = reference.confidence_interval(0.95)
    assert (paired.ci_low, paired.ci_high) == pytest.approx((interval.low, interval.high))
    assert paired.effect_size == pytest.approx((b - a).mean() / (b - a).std(ddof=1))
    independent, reference = independent_test(a, b), stats.ttest_ind(b, a)
    assert independent.t == pytest.approx(reference.statistic) and independent.p_value == pytest.approx(
        reference.pvalue
    )


def test_equivalence_needs_evidence_not_just_no_difference():
    # Fixed samples with mean exactly 0 or -0.2, each far from its decision boundaries (random draws put a
    # "not significant" on a 5% coin flip).
    spread = np.tile([-1.0, 1.0], 25)
    tight = one_sample_test(0.01 * spread, margin=0.05)  # 95% CI about +-0.003
    assert tight.equivalent and not tight.significant, tight
    noisy = one_sample_test(np.array([-0.6, 0.5, -0.3, 0.6, -0.2]), margin=0.05)  # 95% CI about +-0.65
    assert not noisy.equivalent and not noisy.significant, noisy  # "no difference found" is not "the same"
    shifted = one_sample_test(-0.2 + 0.02 * spread[:30], margin=0.05)  # 95% CI about -0.2 +- 0.008
    assert shifted.significant and not shifted.equivalent, shifted
    constant = one_sample_test(np.zeros(10))
    assert constant.equivalent and constant.p_value == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        one_sample_test(np.zeros(1))


# -- records -------------------------------------------------------------------------------------------------------


def test_malformed_lines_are_reported_with_their_numbers(tmp_path):
    path = tmp_path / "stage.jsonl"
    path.write_text(
        '{"prompt": "p1", "response": "r1"}\n'
        "not json\n"
        '{"prompt": "p2"}\n'
        "\n"
        '{"prompt": "p3", "response": 3}\n'
        '{"prompt": "p4", "response": "r", "extra": 1}\n'
    )
    with pytest.raises(ConfigError) as caught:
        read_responses(path)
    assert [(i.line, i.path) for i in caught.value.issues] == [(2, ""), (3, "response"), (5, "response"), (6, "extra")]
    assert f"{path}:2: invalid JSON" in str(caught.value)


def test_samples_are_grouped_by_prompt(tmp_path):
    rows = [
        {"prompt": "p", "response": "a"},
        {"prompt": "q", "response": "b", "query_type": "math"},
        {"prompt": "p", "response": "c"},
    ]
    stage = read_responses(write_responses(tmp_path / "s.jsonl", rows))
    assert stage.responses == {"p": ["a", "c"], "q": ["b"]} and stage.query_types == {"q": "math"}


# -- the gate on real model stages ---------------------------------------------------------------------------------

COLOURS = ["red", "green", "blue", "yellow", "black", "white"]
ANIMALS = ["cat", "dog", "fox", "owl", "bear", "duck"]
FOODS = ["fish", "bread", "apples", "seeds", "honey", "rice"]
PROMPTS = [f"the {c} {a}" for c in COLOURS for a in ANIMALS]


@pytest.fixture(scope="module")
def trained_lm(tmp_path_factory):
    """A tiny Llama trained for a few seconds on a small world of sentences, saved to disk: stage A."""
    random.seed(0)
    torch.manual_seed(0)
    corpus = [
        f"the {c} {a} eats {FOODS[(i + j) % 6]} in the morning and sleeps at night."
        for i, c in enumerate(COLOURS)
        for j, a in enumerate(ANIMALS)
    ]
    lm = llms.build(
        {
            "name": "hf/causal-lm",
            "tokenizer": "bytes",
            "config": {
                "model_type": "llama",
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
            },
        }
    )
    optimizer = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    lm.train()
    for _ in range(300):
        batch = lm.tokenizer(
            [random.choice(corpus) + lm.tokenizer.eos_token for _ in range(32)], return_tensors="pt", padding=True
        )
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        lm(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("stage-a")
    lm.save_pretrained(folder)
    return folder


def load(folder, **options):
    return llms.build({"name": "hf/causal-lm", "path": str(folder), **options})


# Noise of 1 x each weight tensor's own standard deviation turns the tiny model's sentences into byte soup: the gate's
# mean cross-minus-within difference is about -0.8 with greedy decoding and -0.5 with sampling, against a margin of
# 0.05 (a scale of 0.3 lands right at the margin, about -0.05, and a verdict there is a coin flip).
DAMAGE = 1.0


def effect(test) -> str:
    """The gate's effect size next to its margin, for assertion messages."""
    if test is None:
        return "no test: too few prompts in common"
    return (
        f"mean difference {test['mean_difference']:+.4f}, {1 - test['alpha']:.0%} CI "
        f"[{test['ci_low']:+.4f}, {test['ci_high']:+.4f}], margin {test['margin']}"
    )


def assert_clearly_worse(test) -> None:
    """FAIL paths: the whole confidence interval lies more than three margins below zero."""
    assert test is not None, effect(test)
    assert test["ci_high"] < -3 * test["margin"], f"the damage should be obvious: {effect(test)}"


def assert_clearly_same(test) -> None:
    """PASS paths: the whole confidence interval lies within a quarter of the margin."""
    assert test is not None, effect(test)
    assert max(-test["ci_low"], test["ci_high"]) < test["margin"] / 4, f"the stages should match: {effect(test)}"


def as_stage(rows, name):
    stage = StageResponses(name)
    for row in rows:
        stage.responses.setdefault(row["prompt"], []).append(row["response"])
    return stage


@pytest.fixture(scope="module")
def gate():
    return evaluators.build({"name": "simct/gate"})


@pytest.fixture(scope="module")
def greedy_a(trained_lm):
    return respond(load(trained_lm), PROMPTS, max_new_tokens=40)


def test_the_same_weights_saved_and_reloaded_pass(trained_lm, greedy_a, gate, tmp_path):
    again = load(trained_lm)
    again.save_pretrained(tmp_path / "copy")
    result = gate.evaluate(
        as_stage(greedy_a, "a"), as_stage(respond(load(tmp_path / "copy"), PROMPTS, max_new_tokens=40), "b")
    )
    assert_clearly_same(result.comparison.to_dict())
    assert result.verdict == "PASS", result.reason
    assert greedy_a[0]["response"].startswith("eats")  # the model really learnt something


def test_a_perturbed_checkpoint_fails(trained_lm, greedy_a, gate):
    damaged = load(trained_lm)
    perturb(damaged, DAMAGE)
    result = gate.evaluate(as_stage(greedy_a, "a"), as_stage(respond(damaged, PROMPTS, max_new_tokens=40), "b"))
    assert_clearly_worse(result.comparison.to_dict())
    assert result.verdict == "FAIL", result.reason
    assert result.least_consistent and result.least_consistent[0]["score"] < 0.5


def test_a_different_decoding_config_fails(trained_lm, greedy_a, gate):
    hot = respond(load(trained_lm), PROMPTS, do_sample=True, temperature=2.5, max_new_tokens=40, seed=3)
    result = gate.evaluate(as_stage(greedy_a, "a"), as_stage(hot, "b"))
    assert_clearly_worse(result.comparison.to_dict())
    assert result.verdict == "FAIL", result.reason


def test_sampled_stages_compare_within_and_across(trained_lm, gate):
    a = respond(load(trained_lm), PROMPTS, samples=4, do_sample=True, temperature=0.7, seed=1, max_new_tokens=40)
    same = respond(load(trained_lm), PROMPTS, samples=4, do_sample=True, temperature=0.7, seed=2, max_new_tokens=40)
    result = gate.evaluate(as_stage(a, "a"), as_stage(same, "b"))
    assert_clearly_same(result.comparison.to_dict())
    assert result.verdict == "PASS", result.reason
    damaged = load(trained_lm)
    perturb(damaged, DAMAGE)
    worse = respond(damaged, PROMPTS, samples=4, do_sample=True, temperature=0.7, seed=2, max_new_tokens=40)
    result = gate.evaluate(as_stage(a, "a"), as_stage(worse, "b"))
    assert_clearly_worse(result.comparison.to_dict())
    assert result.verdict == "FAIL", result.reason


def test_too_few_prompts_are_inconclusive_and_missing_ones_listed(greedy_a, gate):
    b = as_stage(greedy_a[:3], "b")
    result = gate.evaluate(as_stage(greedy_a, "a"), b)
    assert result.verdict == "INCONCLUSIVE" and "only 3 prompt(s) in common" in result.reason
    assert result.only_in_a == PROMPTS[3:] and result.only_in_b == []


def test_gate_config_checks():
    with pytest.raises(ConfigError, match="classifier: score 'classifier' needs a classifier folder"):
        evaluators.build({"name": "simct/gate", "score": "classifier"})
    with pytest.raises(ConfigError, match="margin: Input should be greater than 0"):
        evaluators.build({"name": "simct/gate", "margin": 0})


def test_cli_exit_codes_and_reports(cli, trained_lm, greedy_a, tmp_path):
    a = write_responses(tmp_path / "a.jsonl", greedy_a)
    damaged = load(trained_lm)
    perturb(damaged, DAMAGE)
    b = write_responses(tmp_path / "b.jsonl", respond(damaged, PROMPTS, max_new_tokens=40)[:-1])
    result = cli("simct", "gate", a, a, "--report", tmp_path / "same")
    assert result.returncode == 0 and result.stdout.startswith("PASS: "), result.output
    assert_clearly_same(json.loads((tmp_path / "same" / "report.json").read_text())["test"])
    result = cli("simct", "gate", a, b, "--report", tmp_path / "report")
    assert (tmp_path / "report" / "report.json").is_file(), result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert_clearly_worse(report["test"])
    assert result.returncode == 1 and result.stdout.startswith("FAIL: "), result.output
    assert f"warning: 1 prompt(s) only in {a}: 'the white duck'" in result.stderr  # listed, not dropped silently
    assert report["verdict"] == "FAIL" and report["only_in_a"] == ["the white duck"]
    assert report["test"]["significant"] is True and len(report["least_consistent"]) == 10
    page = (tmp_path / "report" / "report.html").read_text()
    assert "FAIL" in page and "data:image/png;base64," in page
    assert (tmp_path / "report" / "report.png").read_bytes().startswith(b"\x89PNG")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    result = cli("simct", "gate", a, bad)
    assert result.returncode == 2 and f"{bad}:1: response: required field is missing" in result.stderr


@requires_shared
def test_stsb_rows_with_extra_fields_and_labels():
    from omnimm.sentence.sts import read_stsb
    from omnimm_plugins.simct.stsb import labelled_pairs

    rows = read_stsb(SHARED / "data" / "stsb", "train")
    assert len(rows) == 5749 and all(0 <= r.score <= 5 for r in rows)
    pairs = labelled_pairs(SHARED / "data" / "stsb", "dev")
    assert set(pairs.labels.tolist()) == {0, 1}
    assert all((s >= 4) == bool(label) for s, label in zip(pairs.scores, pairs.labels, strict=True))
    assert not any(2 < s < 4 for s in pairs.scores)


@requires_shared
def test_train_command_on_stsb_and_a_gate_with_its_classifier(cli, greedy_a, tmp_path):
    result = cli("simct", "train", "--stsb", SHARED / "data" / "stsb", "--out", tmp_path / "model")
    assert result.returncode == 0, result.output
    assert "dev accuracy" in result.stdout and (tmp_path / "model" / "model.txt").is_file()
    a = write_responses(tmp_path / "a.jsonl", greedy_a)
    result = cli("simct", "gate", a, a, "--classifier", tmp_path / "model")
    assert result.returncode == 0 and "score classifier" in result.stdout, result.output
