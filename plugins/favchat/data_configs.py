"""Configs of favchat's face-video datasets and answer evaluators (pydantic only: validating them imports neither
torch nor the metric packages).

```yaml
data: {name: favchat/videos, path: data/train.jsonl, task: qa, min_quality: 0.6}
# or CelebV-HQ's own annotation file
data: {name: favchat/celebvhq, path: CelebV-HQ/celebvhq_info.json, media_root: CelebV-HQ/35666, task: emotion}
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from omnimm.config import ComponentConfig, field_error
from omnimm_plugins.favchat.attributes import EMOTION_SETS, GROUPS, Group, closest, emotion_vocabulary

EmotionSet = Literal["celebvhq", "dfew", "mafw"]

DESCRIBE_PROMPTS: tuple[str, ...] = (
    "Describe the person in this video: their appearance, what they do and how they feel.",
    "Summarise the video, focusing on the person's face, actions and emotions.",
    "What does the person in the video look like, what are they doing, and what emotions do they show?",
)
"""Prompts of the `summaries` stage; each video gets one of them (the same one every epoch)."""


def _check_labels(labels: list[str]) -> list[str]:
    cleaned = [label.strip().lower() for label in labels]
    if any(not label for label in cleaned):
        raise ValueError("labels must be non-empty strings")
    repeated = sorted({label for label in cleaned if cleaned.count(label) > 1})
    if repeated:
        raise ValueError(f"labels listed twice: {', '.join(repeated)}")
    return cleaned


class _FaceQuestionsConfig(ComponentConfig):
    """Options of the datasets that turn annotations into conversations."""

    media_root: str | None = None
    """Folder the video paths are relative to (default: the annotation file's folder)."""
    limit: int | None = Field(None, ge=1)
    """Use only the first `limit` items (after the records are turned into questions)."""
    cache: bool = False
    """Keep decoded clips and their preprocessed frames in memory after their first read (small datasets, many
    epochs; preprocessing must be deterministic, as every encoder's own is)."""
    groups: list[Group] = Field(default_factory=lambda: list(GROUPS), min_length=1)
    """Attribute groups to ask about (`attributes` task): `appearance`, `action`, `emotion`."""
    negatives: Literal["balanced", "all", "none"] = "balanced"
    """Yes/no questions about attributes that do not hold: as many as hold (`balanced`, drawn with `seed`), every
    other one (`all`), or none."""
    list_choices: bool = True
    """Name the allowed answers in emotion questions ("Answer with one of: ...")."""
    seed: int = 0
    """Seed of the `balanced` draw (per video, so adding videos does not change the others' questions)."""

    @field_validator("groups")
    @classmethod
    def _unique_groups(cls, groups: list[Group]) -> list[Group]:
        return list(dict.fromkeys(groups))


class FaceVideoDataConfig(_FaceQuestionsConfig):
    """Face videos in favchat's record format (JSON list or JSON Lines), as conversations for one training stage.

    Each record: `{"id", "video", "summary", "qa": [{"question", "answer", "kind"}], "attributes": {"appearance":
    [...], "action": [...], "emotion": ...}, "quality"}` (see the favchat data docs). Tasks: `summaries` (stage 1: the
    summary answers a describe prompt), `qa` (stage 2: the QA pairs), `attributes` (yes/no and emotion questions
    generated from the annotations), `emotion` (only the emotion questions, for zero-shot evaluation).
    """

    path: str
    """The JSON or JSONL file of records."""
    task: Literal["summaries", "qa", "attributes", "emotion"] = "summaries"
    """What the conversations teach or test (see above)."""
    min_quality: float | None = None
    """Leave out records whose `quality` is below this (or missing); `null` keeps every record."""
    multi_turn: bool = False
    """`qa`: all of a video's QA pairs as one conversation (training) instead of one item per pair (evaluation)."""
    prompts: list[str] = Field(default_factory=lambda: list(DESCRIBE_PROMPTS), min_length=1)
    """`summaries`: the describe prompts, one picked per video from its id."""
    emotions: EmotionSet | list[str] = "celebvhq"
    """Emotion labels the records may use: a named set (`celebvhq`, `dfew`, `mafw`) or a list."""

    @field_validator("emotions")
    @classmethod
    def _emotion_labels(cls, emotions: EmotionSet | list[str]) -> EmotionSet | list[str]:
        return emotions if isinstance(emotions, str) else _check_labels(emotions)

    @field_validator("prompts")
    @classmethod
    def _non_empty_prompts(cls, prompts: list[str]) -> list[str]:
        if any(not prompt.strip() for prompt in prompts):
            raise ValueError("prompts must be non-empty")
        return prompts


class CelebVHQDataConfig(_FaceQuestionsConfig):
    """CelebV-HQ's annotation file `celebvhq_info.json`, as attribute or emotion questions about its clips."""

    path: str
    """`celebvhq_info.json`."""
    task: Literal["attributes", "emotion"] = "attributes"
    """`attributes`: yes/no questions per attribute plus emotion questions; `emotion`: only the emotion questions."""
    video_suffix: str = ".mp4"
    """A clip's file is `<media_root>/<clip id><video_suffix>`."""


class EmotionEvalConfig(ComponentConfig):
    """Emotion recognition from free-text replies: UAR, WAR, per-class recall, confusion matrix, bootstrap CIs."""

    labels: EmotionSet | list[str] = "dfew"
    """The classes, fixed: `dfew` (7), `mafw` (11), `celebvhq` (8) or a list. References are read into them with
    the same synonyms as replies; items whose reference is none of them are left out and counted."""
    synonyms: dict[str, list[str]] = Field(default_factory=dict)
    """More words for a label, e.g. `{happy: [beaming]}` (added to the built-in ones)."""
    kinds: list[str] | None = Field(default_factory=lambda: ["emotion"])
    """Score only predictions whose `meta.kind` is one of these (those without a kind are scored); `null`: all."""
    bootstrap: int = Field(1000, ge=0)
    """Resamples for the confidence intervals of UAR and WAR; 0 for none."""
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    """Level of the percentile intervals."""
    seed: int = 0
    """Seed of the resampling."""

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: EmotionSet | list[str]) -> EmotionSet | list[str]:
        if isinstance(labels, str):
            return labels
        if len(labels) < 2:
            raise ValueError("give at least two labels")
        return _check_labels(labels)

    @model_validator(mode="after")
    def _synonym_labels(self) -> EmotionEvalConfig:
        labels = emotion_vocabulary(self.labels)
        for label in self.synonyms:
            if label not in labels:
                close = closest(label, labels)
                hint = f"; did you mean {close!r}?" if close else f" (labels: {', '.join(labels)})"
                raise field_error("synonyms", f"{label!r} is not one of the labels{hint}")
        return self


class AttributeEvalConfig(ComponentConfig):
    """Accuracy of yes/no and choice answers about attributes, per attribute and per group, next to chance."""

    kinds: list[str] | None = Field(default_factory=lambda: ["attribute", "emotion"])
    """Score only predictions whose `meta.kind` is one of these (those without a kind are scored); `null`: all."""
    synonyms: dict[str, list[str]] = Field(default_factory=dict)
    """More words for an answer, e.g. `{yes: [affirmative]}`."""


class CaptionEvalConfig(ComponentConfig):
    """Corpus-level caption metrics against one reference per item: BLEU-4, chrF, ROUGE-L and METEOR (0-100)."""

    kinds: list[str] | None = Field(default_factory=lambda: ["summary"])
    """Score only predictions whose `meta.kind` is one of these (those without a kind are scored); `null`: all."""
    tokenize: Literal["13a", "intl", "char", "none", "zh"] = "13a"
    """sacreBLEU's tokenizer for BLEU."""
    lowercase: bool = False
    """Compare lower-cased text (BLEU and chrF; ROUGE-L and METEOR always lower-case)."""
    rouge_stemmer: bool = False
    """Porter-stem words before ROUGE-L (rouge-score's `use_stemmer`)."""
    meteor: bool = True
    """Also compute METEOR (exact and stem matches; no WordNet synonyms); needs nltk."""


__all__ = [
    "DESCRIBE_PROMPTS",
    "EMOTION_SETS",
    "AttributeEvalConfig",
    "CaptionEvalConfig",
    "CelebVHQDataConfig",
    "EmotionEvalConfig",
    "FaceVideoDataConfig",
]
