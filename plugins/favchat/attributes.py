"""CelebV-HQ's 83 facial attributes as a typed schema: 40 appearance, 35 action and 8 emotion labels.

The names and their order are CelebV-HQ's own: `meta_info.appearance_mapping` and `meta_info.action_mapping` of its
annotation file `celebvhq_info.json` give the position of each attribute in a clip's 0/1 vectors, and the emotion
labels are the strings its clips carry (`"sadness"`, not `"sad"`). Each attribute has a yes/no question, used to
turn annotations into training and evaluation questions.

```python
from omnimm_plugins.favchat.attributes import APPEARANCE, lookup

APPEARANCE[20].name, APPEARANCE[20].question   # ('eyeglasses', 'Is the person wearing eyeglasses?')
lookup("appearance", "Eyeglasses")             # 'eyeglasses' (case does not matter)
lookup("appearance", "Eyeglass")               # UnknownLabelError: unknown appearance attribute 'Eyeglass'
                                               #   (did you mean 'eyeglasses'?)
```

The emotion vocabularies of the zero-shot benchmarks are here too (`DFEW_EMOTIONS`, `MAFW_EMOTIONS`): they are
spelled as those datasets spell them, which is not how CelebV-HQ does (`angry` / `anger`, `sad` / `sadness`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Group = Literal["appearance", "action", "emotion"]
GROUPS: tuple[Group, ...] = ("appearance", "action", "emotion")


@dataclass(frozen=True)
class Attribute:
    """One CelebV-HQ attribute: its name as the annotation file spells it, its group, its position in the group's
    mapping (the index into a clip's 0/1 vector), and the yes/no question that asks for it."""

    name: str
    group: Group
    index: int
    question: str


# (name, question) in the order of `meta_info.appearance_mapping`.
_APPEARANCE = (
    ("blurry", "Is the video blurry?"),
    ("male", "Is the person male?"),
    ("young", "Does the person look young?"),
    ("chubby", "Is the person chubby?"),
    ("pale_skin", "Does the person have pale skin?"),
    ("rosy_cheeks", "Does the person have rosy cheeks?"),
    ("oval_face", "Does the person have an oval face?"),
    ("receding_hairline", "Does the person have a receding hairline?"),
    ("bald", "Is the person bald?"),
    ("bangs", "Does the person have bangs?"),
    ("black_hair", "Does the person have black hair?"),
    ("blonde_hair", "Does the person have blonde hair?"),
    ("gray_hair", "Does the person have gray hair?"),
    ("brown_hair", "Does the person have brown hair?"),
    ("straight_hair", "Does the person have straight hair?"),
    ("wavy_hair", "Does the person have wavy hair?"),
    ("long_hair", "Does the person have long hair?"),
    ("arched_eyebrows", "Does the person have arched eyebrows?"),
    ("bushy_eyebrows", "Does the person have bushy eyebrows?"),
    ("bags_under_eyes", "Does the person have bags under the eyes?"),
    ("eyeglasses", "Is the person wearing eyeglasses?"),
    ("sunglasses", "Is the person wearing sunglasses?"),
    ("narrow_eyes", "Does the person have narrow eyes?"),
    ("big_nose", "Does the person have a big nose?"),
    ("pointy_nose", "Does the person have a pointy nose?"),
    ("high_cheekbones", "Does the person have high cheekbones?"),
    ("big_lips", "Does the person have big lips?"),
    ("double_chin", "Does the person have a double chin?"),
    ("no_beard", "Is the person beardless?"),
    ("5_o_clock_shadow", "Does the person have a five o'clock shadow (light stubble)?"),
    ("goatee", "Does the person have a goatee?"),
    ("mustache", "Does the person have a mustache?"),
    ("sideburns", "Does the person have sideburns?"),
    ("heavy_makeup", "Is the person wearing heavy makeup?"),
    ("wearing_earrings", "Is the person wearing earrings?"),
    ("wearing_hat", "Is the person wearing a hat?"),
    ("wearing_lipstick", "Is the person wearing lipstick?"),
    ("wearing_necklace", "Is the person wearing a necklace?"),
    ("wearing_necktie", "Is the person wearing a necktie?"),
    ("wearing_mask", "Is the person wearing a mask?"),
)

# (name, what the person is doing) in the order of `meta_info.action_mapping`.
_ACTION = (
    ("blow", "blowing"),
    ("chew", "chewing"),
    ("close_eyes", "closing their eyes"),
    ("cough", "coughing"),
    ("cry", "crying"),
    ("drink", "drinking"),
    ("eat", "eating"),
    ("frown", "frowning"),
    ("gaze", "gazing"),
    ("glare", "glaring"),
    ("head_wagging", "wagging their head"),
    ("kiss", "kissing"),
    ("laugh", "laughing"),
    ("listen_to_music", "listening to music"),
    ("look_around", "looking around"),
    ("make_a_face", "making a face"),
    ("nod", "nodding"),
    ("play_instrument", "playing an instrument"),
    ("read", "reading"),
    ("shake_head", "shaking their head"),
    ("shout", "shouting"),
    ("sigh", "sighing"),
    ("sing", "singing"),
    ("sleep", "sleeping"),
    ("smile", "smiling"),
    ("smoke", "smoking"),
    ("sneer", "sneering"),
    ("sneeze", "sneezing"),
    ("sniff", "sniffing"),
    ("talk", "talking"),
    ("turn", "turning their head"),
    ("weep", "weeping"),
    ("whisper", "whispering"),
    ("wink", "winking"),
    ("yawn", "yawning"),
)

CELEBVHQ_EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sadness", "anger", "fear", "surprise", "contempt", "disgust")
"""CelebV-HQ's 8 emotion labels, as its clips spell them."""

DFEW_EMOTIONS: tuple[str, ...] = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
"""DFEW's 7 classes in its label order (1 happy ... 7 fear)."""

MAFW_EMOTIONS: tuple[str, ...] = (
    "anger",
    "disgust",
    "fear",
    "happiness",
    "neutral",
    "sadness",
    "surprise",
    "contempt",
    "anxiety",
    "helplessness",
    "disappointment",
)
"""MAFW's 11 single-label classes."""

EMOTION_SETS: dict[str, tuple[str, ...]] = {
    "celebvhq": CELEBVHQ_EMOTIONS,
    "dfew": DFEW_EMOTIONS,
    "mafw": MAFW_EMOTIONS,
}
"""Named emotion vocabularies: a config may say `emotions: dfew` instead of listing the labels."""

EMOTION_ALIASES: dict[str, dict[str, str]] = {"celebvhq": {"sad": "sadness"}}
"""Spellings a record may use for a label of a vocabulary (read as the label)."""

APPEARANCE: tuple[Attribute, ...] = tuple(
    Attribute(name, "appearance", index, question) for index, (name, question) in enumerate(_APPEARANCE)
)
ACTION: tuple[Attribute, ...] = tuple(
    Attribute(name, "action", index, f"Is the person {doing} in the video?")
    for index, (name, doing) in enumerate(_ACTION)
)
EMOTION: tuple[Attribute, ...] = tuple(
    Attribute(name, "emotion", index, f"Does the person show {name}?") for index, name in enumerate(CELEBVHQ_EMOTIONS)
)

APPEARANCE_NAMES: tuple[str, ...] = tuple(a.name for a in APPEARANCE)
"""`meta_info.appearance_mapping`: 40 names, in vector order."""
ACTION_NAMES: tuple[str, ...] = tuple(a.name for a in ACTION)
"""`meta_info.action_mapping`: 35 names, in vector order."""

ATTRIBUTES: dict[Group, tuple[Attribute, ...]] = {"appearance": APPEARANCE, "action": ACTION, "emotion": EMOTION}
_BY_NAME: dict[Group, dict[str, Attribute]] = {group: {a.name: a for a in items} for group, items in ATTRIBUTES.items()}
ACTIVITY: dict[str, str] = dict(_ACTION)
"""Action name -> what the person is doing (`"close_eyes"` -> `"closing their eyes"`)."""

_NOUNS = {"appearance": "appearance attribute", "action": "action", "emotion": "emotion"}


class UnknownLabelError(ValueError):
    """A name is not one of a group's attributes (or an emotion vocabulary's labels); the message suggests the
    closest one."""

    def __init__(self, message: str, *, name: str, suggestion: str | None) -> None:
        super().__init__(message)
        self.name = name
        self.suggestion = suggestion


def attribute(group: Group, name: str) -> Attribute:
    """The attribute of `group` called `name` (CelebV-HQ's spelling, any case)."""
    return _BY_NAME[group][lookup(group, name)]


def lookup(
    group: Group, name: str, vocabulary: Sequence[str] | None = None, aliases: Mapping[str, str] | None = None
) -> str:
    """`name` as the schema spells it. Case is ignored; for emotions, `vocabulary` replaces CelebV-HQ's labels
    and `aliases` maps other spellings onto them. An unknown name raises `UnknownLabelError` with a close match."""
    names: Sequence[str]
    if group == "emotion":
        names = CELEBVHQ_EMOTIONS if vocabulary is None else vocabulary
        if aliases is None and vocabulary is None:
            aliases = EMOTION_ALIASES["celebvhq"]
    else:
        names = APPEARANCE_NAMES if group == "appearance" else ACTION_NAMES
    folded = {n.lower(): n for n in names}
    key = name.strip().lower()
    if key in folded:
        return folded[key]
    if aliases and key in aliases and aliases[key] in names:
        return aliases[key]
    close = closest(key, list(folded))
    suggestion = folded[close] if close else None
    raise UnknownLabelError(unknown_message(group, name, names, suggestion), name=name, suggestion=suggestion)


def closest(name: str, names: Iterable[str]) -> str | None:
    """The name closest to `name` (ignoring case), or None when nothing is close."""
    lowered = {n.lower(): n for n in names}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None


def unknown_message(group: Group, name: Any, names: Sequence[str], suggestion: str | None) -> str:
    what = f"unknown {_NOUNS[group]} {name!r}"
    if suggestion:
        return f"{what} (did you mean {suggestion!r}?)"
    if len(names) <= 12:
        return f"{what} (expected one of: {', '.join(names)})"
    return f"{what} (not one of CelebV-HQ's {len(names)} {_NOUNS[group]} names)"


def emotion_vocabulary(emotions: str | Sequence[str]) -> tuple[str, ...]:
    """A named vocabulary (`celebvhq`, `dfew`, `mafw`) or a list of labels, as a tuple of labels."""
    if isinstance(emotions, str):
        return EMOTION_SETS[emotions]
    return tuple(emotions)


def emotion_aliases(emotions: str | Sequence[str]) -> dict[str, str]:
    return dict(EMOTION_ALIASES.get(emotions, {})) if isinstance(emotions, str) else {}


@dataclass(frozen=True)
class Segment:
    """A label that holds over part of a clip (seconds from the clip's start); untimed when both times are None."""

    label: str
    start_sec: float | None = None
    end_sec: float | None = None

    @property
    def timed(self) -> bool:
        return self.start_sec is not None and self.end_sec is not None

    @property
    def duration(self) -> float:
        return (self.end_sec - self.start_sec) if self.timed else 0.0  # type: ignore[operator]


@dataclass(frozen=True)
class FaceAttributes:
    """What a clip's annotation says about the face in it; None where a group is not annotated.

    `appearance`: the appearance attributes that hold (the others do not). `action`: the actions seen, each possibly
    with its time span (the others are not seen). `emotion`: one label for the whole clip, or time segments
    (CelebV-HQ's `sep_flag: true`).
    """

    appearance: tuple[str, ...] | None = None
    action: tuple[Segment, ...] | None = None
    emotion: str | tuple[Segment, ...] | None = None

    @property
    def actions(self) -> tuple[str, ...]:
        """The names of the actions seen, each once, in the order they are listed."""
        return tuple(dict.fromkeys(segment.label for segment in self.action or ()))

    def annotated(self, group: Group) -> bool:
        """Whether the annotation says anything about `group`."""
        return getattr(self, group) is not None

    @property
    def segmented(self) -> bool:
        """True when the emotion changes within the clip (given as segments)."""
        return isinstance(self.emotion, tuple)

    def emotion_overall(self) -> str | None:
        """The clip's emotion: the single label, or the one whose segments last longest in total (first on ties)."""
        if self.emotion is None or isinstance(self.emotion, str):
            return self.emotion
        totals: dict[str, float] = {}
        for segment in self.emotion:
            totals[segment.label] = totals.get(segment.label, 0.0) + segment.duration
        return max(totals, key=lambda label: totals[label]) if totals else None

    def emotion_at(self, position: Literal["start", "end"]) -> str | None:
        """The emotion of the first (`start`) or last (`end`) segment in time; the single label if not segmented."""
        if self.emotion is None or isinstance(self.emotion, str):
            return self.emotion
        ordered = sorted(self.emotion, key=lambda s: (s.start_sec or 0.0, s.end_sec or 0.0))
        return (ordered[0] if position == "start" else ordered[-1]).label

    def to_dict(self) -> dict[str, Any]:
        """The record form: `{"appearance": [...], "action": [...], "emotion": ...}`."""
        emotion: Any = self.emotion
        if isinstance(self.emotion, tuple):
            emotion = [{"emotion": s.label, "start_sec": s.start_sec, "end_sec": s.end_sec} for s in self.emotion]
        data: dict[str, Any] = {}
        if self.appearance is not None:
            data["appearance"] = list(self.appearance)
        if self.action is not None:
            data["action"] = [
                {"name": s.label, "start_sec": s.start_sec, "end_sec": s.end_sec} if s.timed else s.label
                for s in self.action
            ]
        if emotion is not None:
            data["emotion"] = emotion
        return data
