"""Scoring a model's free-text answers: predictions, answer evaluators, and the core's `omnimm/choice-accuracy`.

An answer evaluator is any registered evaluator with `evaluate(predictions) -> dict` over `Prediction` records
(`omnimm eval` calls it). Evaluators that parse free text record what they parsed in `prediction.parsed[<their
name>]` and keep an explicit count of replies they could not parse: an unparsed reply is never mapped to a label.

```python
from omnimm import evaluators
from omnimm.evaluation import Prediction

scorer = evaluators.build({"name": "omnimm/choice-accuracy", "group_by": "kind"})
scorer.evaluate([Prediction(id="1", question="which way?", reply="Left.", reference="left",
                            meta={"kind": "direction", "choices": ["left", "right", "up", "down"]})])
```
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from pydantic import Field

from omnimm.config import ComponentConfig

UNPARSED = "<unparsed>"
"""The label of a reply an evaluator could not map to any choice."""


@dataclass
class Prediction:
    """One question asked of a model, its reply, and what the data says the answer is."""

    id: str
    question: str
    reply: str
    reference: str
    media: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    """What the dataset knows about the item (e.g. `kind`, `choices`, attribute names)."""
    parsed: dict[str, Any] = field(default_factory=dict)
    """Evaluator name -> the label it read from the reply (`UNPARSED` when it found none)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Prediction:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


class AnswerEvaluator(Protocol):
    """What `omnimm eval` needs of an evaluator: `scores_answers = True` on its class (so the command can tell it from
    evaluators of other things before building it) and `evaluate(predictions)`."""

    scores_answers: bool

    def evaluate(self, predictions: Sequence[Prediction]) -> dict[str, Any]: ...


def normalise(text: str) -> str:
    """Lower case, accents folded, punctuation to spaces, single spaces: the form answers are compared in."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode() or text
    return " ".join(re.sub(r"[^\w\s]", " ", folded.lower()).split())


class LabelParser:
    """Finds which of a set of labels a free-text reply names: each label (and its synonyms) as whole words; the
    one mentioned first wins; none found is `UNPARSED`."""

    def __init__(self, labels: Sequence[str], synonyms: Mapping[str, Sequence[str]] | None = None) -> None:
        self.labels = list(labels)
        phrases: list[tuple[str, str]] = []
        for label in self.labels:
            for phrase in [label, *(synonyms or {}).get(label, [])]:
                if normalise(phrase):
                    phrases.append((normalise(phrase), label))
        phrases.sort(key=lambda item: -len(item[0]))  # "very happy" before "happy"
        self._patterns = [(re.compile(rf"\b{re.escape(phrase)}\b"), label) for phrase, label in phrases]

    def __call__(self, reply: str) -> str:
        text = normalise(reply)
        best: tuple[int, int, str] | None = None
        for order, (pattern, label) in enumerate(self._patterns):
            match = pattern.search(text)
            if match and (best is None or (match.start(), order) < best[:2]):
                best = (match.start(), order, label)
        return best[2] if best is not None else UNPARSED


class ChoiceAccuracyConfig(ComponentConfig):
    """Accuracy of free-text answers to multiple-choice questions, overall and per group."""

    choices: list[str] | None = None
    """The labels; unset: each prediction's `meta["choices"]`."""
    synonyms: dict[str, list[str]] = Field(default_factory=dict)
    """Other words that mean a label, e.g. `{left: [leftwards]}`."""
    group_by: str | None = "kind"
    """A `meta` field to break the accuracy down by (e.g. the question type); `null` for none."""


class ChoiceAccuracy:
    """`omnimm/choice-accuracy`: parse each reply into one of the choices; accuracy counts unparsed replies as
    wrong and reports how many there were."""

    scores_answers = True

    def __init__(self, config: ChoiceAccuracyConfig | None = None) -> None:
        self.config = config or ChoiceAccuracyConfig()
        self.key = self.config.name or "omnimm/choice-accuracy"

    def evaluate(self, predictions: Sequence[Prediction]) -> dict[str, Any]:
        groups: dict[str, list[tuple[bool, bool]]] = {}
        chances: dict[str, list[float]] = {}
        for prediction in predictions:
            choices = self.config.choices or prediction.meta.get("choices")
            if not choices:
                raise ValueError(
                    f"prediction {prediction.id}: no choices (set `choices` in the evaluator, or meta.choices in "
                    f"the data)"
                )
            label = LabelParser(choices, self.config.synonyms)(prediction.reply)
            prediction.parsed[self.key] = label
            truth = LabelParser(choices, self.config.synonyms)(prediction.reference)
            group = str(prediction.meta.get(self.config.group_by, "all")) if self.config.group_by else "all"
            groups.setdefault(group, []).append((label == truth and label != UNPARSED, label == UNPARSED))
            chances.setdefault(group, []).append(1.0 / len(choices))
        every = [item for items in groups.values() for item in items]
        return {
            "accuracy": _share(every),
            "unparsed": sum(unparsed for _, unparsed in every),
            "n": len(every),
            "groups": {
                group: {
                    "accuracy": _share(items),
                    "chance": sum(chances[group]) / len(chances[group]),
                    "unparsed": sum(unparsed for _, unparsed in items),
                    "n": len(items),
                }
                for group, items in groups.items()
            },
        }


def _share(items: Sequence[tuple[bool, bool]]) -> float | None:
    return sum(correct for correct, _ in items) / len(items) if items else None
