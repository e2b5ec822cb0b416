"""Scoring favchat's free-text answers: emotion recognition (UAR/WAR), attribute questions, and captions.

Each evaluator follows `omnimm.evaluation`: `evaluate(predictions) -> dict` over `Prediction` records, the label it
read from each reply stored in `prediction.parsed[<its name>]`, and replies it could not read counted as
`UNPARSED`, never mapped to a label (in particular never to `neutral`).

- `favchat/emotion` (`EmotionEvaluator`): unweighted average recall (UAR, the mean of per-class recalls) and
  weighted average recall (WAR, accuracy) over a fixed label list (DFEW's 7, MAFW's 11, CelebV-HQ's 8, or yours),
  per-class recall and support, the confusion matrix with an unparsed column, and bootstrap confidence intervals.
- `favchat/attributes` (`AttributeEvaluator`): accuracy of yes/no and choice answers per attribute and per group
  (appearance / action / emotion), each next to its chance level (always answering the majority answer).
- `favchat/captions` (`CaptionEvaluator`): corpus BLEU-4 and chrF (sacreBLEU), ROUGE-L (rouge-score) and METEOR
  (exact and stem matches, without WordNet synonyms), 0-100.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from omnimm.deps import require
from omnimm.evaluation import UNPARSED, LabelParser, Prediction, normalise
from omnimm_plugins.favchat.attributes import emotion_vocabulary
from omnimm_plugins.favchat.data_configs import AttributeEvalConfig, CaptionEvalConfig, EmotionEvalConfig

# Words for each emotion. A label is given the words of the concept its own name belongs to, so `angry` (DFEW) and
# `anger` (MAFW, CelebV-HQ) both read "furious"; a label outside every concept reads only itself and its synonyms.
EMOTION_WORDS: dict[str, tuple[str, ...]] = {
    "happy": ("happy", "happiness", "happily", "joy", "joyful", "joyous", "glad", "cheerful", "delighted", "elated"),
    "sad": (
        "sad",
        "sadness",
        "sadly",
        "unhappy",
        "sorrow",
        "sorrowful",
        "gloomy",
        "depressed",
        "melancholy",
        "grief",
        "grieving",
        "heartbroken",
        "miserable",
    ),
    "anger": (
        "anger",
        "angry",
        "angrily",
        "furious",
        "fury",
        "rage",
        "enraged",
        "mad",
        "irritated",
        "annoyed",
        "irate",
        "outraged",
    ),
    "fear": ("fear", "afraid", "scared", "fearful", "frightened", "terrified", "terror", "horrified", "panicked"),
    "surprise": (
        "surprise",
        "surprised",
        "astonished",
        "astonishment",
        "amazed",
        "amazement",
        "shocked",
        "startled",
        "stunned",
    ),
    "disgust": ("disgust", "disgusted", "revulsion", "repulsed", "repelled", "grossed out"),
    "neutral": (
        "neutral",
        "no emotion",
        "no particular emotion",
        "no clear emotion",
        "no strong emotion",
        "expressionless",
        "emotionless",
        "impassive",
        "blank expression",
    ),
    "contempt": ("contempt", "contemptuous", "disdain", "disdainful", "scorn", "scornful"),
    "anxiety": ("anxiety", "anxious", "nervous", "nervousness", "worried", "worry", "uneasy"),
    "helplessness": ("helplessness", "helpless", "powerless"),
    "disappointment": ("disappointment", "disappointed", "let down"),
}

NEGATORS = frozenset(
    {"not", "no", "never", "neither", "nor", "without", "t", "isnt", "arent", "doesnt", "dont", "didnt", "hardly"}
)
"""Words that negate an emotion word among the three before it in the same clause ("isn't" reads as "isn t")."""
_NEGATION_WINDOW = 3
_CLAUSES = re.compile(r"[.,;:!?()]|\b(?:but|however|rather|instead|although|though)\b", re.IGNORECASE)

YES_NO_WORDS: dict[str, list[str]] = {
    "yes": ["yeah", "yep", "correct", "true", "indeed", "affirmative"],
    "no": ["nope", "not", "false", "incorrect", "negative", "isn t", "doesn t", "isnt", "doesnt"],
}


def _concept(label: str) -> str | None:
    key = normalise(label)
    return next((concept for concept, words in EMOTION_WORDS.items() if key in words), None)


class EmotionParser:
    """Reads which of `labels` a free-text reply names: the label, its synonyms (built-in and `synonyms`), as whole
    words; the first mention that is not negated wins ("not happy, rather sad" -> sad); none is `UNPARSED`.

    A mention is negated when one of `NEGATORS` is among the three words before it in its clause, so "not happy"
    alone is unparsed rather than guessed.
    """

    def __init__(self, labels: Sequence[str], synonyms: Mapping[str, Sequence[str]] | None = None) -> None:
        self.labels = list(labels)
        phrases: dict[str, str] = {}
        for label in self.labels:  # a label's own name always means that label
            phrases.setdefault(normalise(label), label)
        for label, words in (synonyms or {}).items():
            for word in words:
                if normalise(word):
                    phrases.setdefault(normalise(word), label)
        for label in self.labels:
            concept = _concept(label)
            for word in EMOTION_WORDS.get(concept, ()) if concept else ():
                phrases.setdefault(normalise(word), label)
        self._label = phrases
        ordered = sorted(phrases, key=len, reverse=True)  # "no particular emotion" before "no emotion"
        self._pattern = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in ordered) + r")\b")

    def __call__(self, reply: str) -> str:
        for clause in _CLAUSES.split(reply):
            text = normalise(clause)
            for match in self._pattern.finditer(text):
                before = text[: match.start()].split()[-_NEGATION_WINDOW:]
                if not any(word in NEGATORS for word in before):
                    return self._label[match.group(0)]
        return UNPARSED


def _key(config: Any, default: str) -> str:
    return config.name or default


def _scored(prediction: Prediction, kinds: Sequence[str] | None) -> bool:
    kind = prediction.meta.get("kind")
    return kinds is None or kind is None or kind in kinds


# -- emotion recognition -----------------------------------------------------------------------------------------


def recall_scores(true: np.ndarray, predicted: np.ndarray, classes: int) -> tuple[float | None, float | None]:
    """UAR (mean recall over the classes that occur in `true`) and WAR (accuracy); integer labels, where
    `predicted == classes` is the unparsed bucket (wrong for every class)."""
    if len(true) == 0:
        return None, None
    support = np.bincount(true, minlength=classes)
    hits = np.bincount(true[true == predicted], minlength=classes)
    present = support > 0
    return float(np.mean(hits[present] / support[present])), float(np.mean(true == predicted))


def bootstrap_intervals(
    true: np.ndarray, predicted: np.ndarray, classes: int, *, resamples: int, confidence: float, seed: int
) -> dict[str, list[float]]:
    """Percentile intervals of UAR and WAR over `resamples` resamplings of the items (with replacement)."""
    rng = np.random.default_rng(seed)
    n = len(true)
    correct = (true == predicted).astype(np.float64)
    uars, wars = [], []
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        index = rng.integers(0, n, size=(rows, n))
        flat = (np.arange(rows)[:, None] * classes + true[index]).ravel()
        support = np.bincount(flat, minlength=rows * classes).reshape(rows, classes)
        hits = np.bincount(flat, weights=correct[index].ravel(), minlength=rows * classes).reshape(rows, classes)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(support > 0, hits / np.maximum(support, 1), np.nan)
        uars.append(np.nanmean(recall, axis=1))
        wars.append(correct[index].mean(axis=1))
    tail = (1 - confidence) / 2
    uar, war = np.concatenate(uars), np.concatenate(wars)
    return {
        "uar": [float(v) for v in np.quantile(uar, [tail, 1 - tail])],
        "war": [float(v) for v in np.quantile(war, [tail, 1 - tail])],
    }


class EmotionEvaluator:
    """`favchat/emotion`: UAR and WAR of free-text emotion answers over a fixed label list.

    References are read with the same parser as replies, so a CelebV-HQ reference `sadness` counts as DFEW's `sad`;
    an item whose reference is none of the labels (e.g. `contempt` under DFEW) is left out and counted in
    `excluded`. An unparsed reply is wrong: it lowers WAR and the recall of its true class.
    """

    scores_answers = True

    def __init__(self, config: EmotionEvalConfig | None = None) -> None:
        self.config = config or EmotionEvalConfig()
        self.key = _key(self.config, "favchat/emotion")
        self.labels = list(emotion_vocabulary(self.config.labels))
        self.parser = EmotionParser(self.labels, self.config.synonyms)

    def evaluate(self, predictions: Sequence[Prediction]) -> dict[str, Any]:
        index = {label: position for position, label in enumerate(self.labels)}
        classes = len(self.labels)
        true, predicted = [], []
        excluded: Counter[str] = Counter()
        ignored = 0
        for prediction in predictions:
            if not _scored(prediction, self.config.kinds):
                ignored += 1
                continue
            label = self.parser(prediction.reply)
            prediction.parsed[self.key] = label
            truth = self.parser(prediction.reference)
            if truth == UNPARSED:
                excluded[prediction.reference] += 1
                continue
            true.append(index[truth])
            predicted.append(index.get(label, classes))
        true_a, predicted_a = np.array(true, dtype=np.int64), np.array(predicted, dtype=np.int64)
        confusion = np.zeros((classes, classes + 1), dtype=np.int64)
        np.add.at(confusion, (true_a, predicted_a), 1)
        support = confusion.sum(axis=1)
        uar, war = recall_scores(true_a, predicted_a, classes)
        intervals = None
        if self.config.bootstrap and len(true_a):
            intervals = {
                "level": self.config.confidence,
                "resamples": self.config.bootstrap,
                "seed": self.config.seed,
                **bootstrap_intervals(
                    true_a,
                    predicted_a,
                    classes,
                    resamples=self.config.bootstrap,
                    confidence=self.config.confidence,
                    seed=self.config.seed,
                ),
            }
        return {
            "uar": uar,
            "war": war,
            "n": len(true),
            "unparsed": int(confusion[:, classes].sum()),
            "classes_present": int((support > 0).sum()),
            "excluded": sum(excluded.values()),
            "excluded_references": dict(excluded.most_common(10)),
            "ignored": ignored,
            "labels": list(self.labels),
            "per_class": {
                label: {
                    "recall": float(confusion[k, k] / support[k]) if support[k] else None,
                    "support": int(support[k]),
                    "predicted": int(confusion[:, k].sum()),
                }
                for k, label in enumerate(self.labels)
            },
            "confusion": {
                "rows": list(self.labels),
                "columns": [*self.labels, UNPARSED],
                "matrix": confusion.tolist(),
            },
            "ci": intervals,
        }


# -- attribute questions -----------------------------------------------------------------------------------------


class _Tally:
    def __init__(self) -> None:
        self.n = 0
        self.correct = 0
        self.unparsed = 0
        self.answers: Counter[str] = Counter()

    def add(self, truth: str, label: str) -> None:
        self.n += 1
        self.correct += label == truth
        self.unparsed += label == UNPARSED
        self.answers[truth] += 1

    @property
    def majority(self) -> int:
        return max(self.answers.values(), default=0)


def _summary(tallies: Sequence[_Tally]) -> dict[str, Any]:
    n = sum(t.n for t in tallies)
    return {
        "accuracy": sum(t.correct for t in tallies) / n if n else None,
        "chance": sum(t.majority for t in tallies) / n if n else None,
        "n": n,
        "unparsed": sum(t.unparsed for t in tallies),
    }


class AttributeEvaluator:
    """`favchat/attributes`: accuracy per attribute, per group and overall, each next to chance.

    Chance is the accuracy of always giving each attribute's most frequent reference answer (the majority class);
    for a group or overall, that baseline summed over its attributes. Yes/no replies are read from their yes/no
    words ("Yes, ..." / "No" / "not"), emotion replies with the emotion parser, other choices as whole words. The
    reference is `meta.answer` when it is one of the choices, else the parsed reference text; an item whose
    reference cannot be read is left out and counted in `excluded`.
    """

    scores_answers = True

    def __init__(self, config: AttributeEvalConfig | None = None) -> None:
        self.config = config or AttributeEvalConfig()
        self.key = _key(self.config, "favchat/attributes")
        self._parsers: dict[tuple[bool, tuple[str, ...]], Callable[[str], str]] = {}

    def _parser(self, choices: Sequence[str], emotion: bool) -> Callable[[str], str]:
        key = (emotion, tuple(choices))
        if key not in self._parsers:
            synonyms = {label: words for label, words in self.config.synonyms.items() if label in choices}
            if emotion:
                self._parsers[key] = EmotionParser(choices, synonyms)
            elif set(choices) == {"yes", "no"}:
                merged = {label: [*YES_NO_WORDS[label], *synonyms.get(label, [])] for label in ("yes", "no")}
                self._parsers[key] = LabelParser(choices, merged)
            else:
                self._parsers[key] = LabelParser(choices, synonyms)
        return self._parsers[key]

    def evaluate(self, predictions: Sequence[Prediction]) -> dict[str, Any]:
        attributes: dict[str, _Tally] = {}
        group_of: dict[str, str] = {}
        excluded = ignored = 0
        for prediction in predictions:
            if not _scored(prediction, self.config.kinds):
                ignored += 1
                continue
            meta = prediction.meta
            choices = list(meta.get("choices") or ["yes", "no"])
            group = str(meta.get("group") or ("emotion" if meta.get("kind") == "emotion" else "other"))
            parser = self._parser(choices, group == "emotion")
            label = parser(prediction.reply)
            prediction.parsed[self.key] = label
            answer = meta.get("answer")
            truth = answer if answer in choices else parser(prediction.reference)
            if truth == UNPARSED:
                excluded += 1
                continue
            name = str(meta.get("attribute") or prediction.question)
            attributes.setdefault(name, _Tally()).add(truth, label)
            group_of.setdefault(name, group)
        groups: dict[str, list[_Tally]] = {}
        for name, tally in attributes.items():
            groups.setdefault(group_of[name], []).append(tally)
        return {
            **_summary(list(attributes.values())),
            "excluded": excluded,
            "ignored": ignored,
            "groups": {group: _summary(tallies) for group, tallies in groups.items()},
            "attributes": {
                name: {
                    "group": group_of[name],
                    **_summary([tally]),
                    "majority": tally.answers.most_common(1)[0][0],
                }
                for name, tally in attributes.items()
            },
        }


# -- captions ----------------------------------------------------------------------------------------------------


class CaptionEvaluator:
    """`favchat/captions`: corpus-level caption metrics without a judge model, all on a 0-100 scale.

    - BLEU-4: sacreBLEU's corpus BLEU with its defaults (`tokenize`, exponential smoothing).
    - chrF: sacreBLEU's corpus chrF (character 6-grams, beta 2).
    - ROUGE-L: rouge-score's ROUGE-L F-measure per item, averaged over items.
    - METEOR: NLTK's METEOR formula (alpha 0.9, beta 3, gamma 0.5) with exact and Porter-stem matches but no
      WordNet synonym stage, per item on lower-cased words, averaged; it is at most NLTK's full METEOR.
    """

    scores_answers = True

    def __init__(self, config: CaptionEvalConfig | None = None) -> None:
        self.config = config or CaptionEvalConfig()
        self.key = _key(self.config, "favchat/captions")

    def evaluate(self, predictions: Sequence[Prediction]) -> dict[str, Any]:
        items = [p for p in predictions if _scored(p, self.config.kinds)]
        result: dict[str, Any] = {
            "n": len(items),
            "ignored": len(predictions) - len(items),
            "empty_replies": sum(not p.reply.strip() for p in items),
        }
        if not items:
            return {**result, "bleu4": None, "chrf": None, "rougeL": None, "meteor": None}
        metrics = require("sacrebleu.metrics", extra="favchat", pip="sacrebleu", purpose="BLEU and chrF")
        rouge = require("rouge_score.rouge_scorer", extra="favchat", pip="rouge-score", purpose="ROUGE-L")
        hypotheses = [p.reply for p in items]
        references = [p.reference for p in items]
        bleu = metrics.BLEU(tokenize=self.config.tokenize, lowercase=self.config.lowercase)
        bleu_score = bleu.corpus_score(hypotheses, [references])
        chrf = metrics.CHRF(lowercase=self.config.lowercase)
        chrf_score = chrf.corpus_score(hypotheses, [references])
        scorer = rouge.RougeScorer(["rougeL"], use_stemmer=self.config.rouge_stemmer)
        rouge_l = [scorer.score(ref, hyp)["rougeL"].fmeasure for ref, hyp in zip(references, hypotheses, strict=True)]
        result.update(
            bleu4=float(bleu_score.score),
            chrf=float(chrf_score.score),
            rougeL=100.0 * float(np.mean(rouge_l)),
            meteor=None,
            bleu_details={
                "precisions": [float(p) for p in bleu_score.precisions],
                "brevity_penalty": float(bleu_score.bp),
                "hyp_len": int(bleu_score.sys_len),
                "ref_len": int(bleu_score.ref_len),
            },
            signatures={"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())},
        )
        if self.config.meteor:
            result["meteor"] = 100.0 * float(np.mean(meteor_scores(references, hypotheses)))
        return result


def meteor_scores(references: Sequence[str], hypotheses: Sequence[str]) -> list[float]:
    """Per-item METEOR (exact + stem stages) on lower-cased `[a-z0-9]+` words."""
    require("nltk", extra="favchat", purpose="METEOR's stem matching")
    from omnimm_plugins.simct.features import meteor
    from omnimm_plugins.simct.text import words

    return [meteor(words(ref), words(hyp)) for ref, hyp in zip(references, hypotheses, strict=True)]
