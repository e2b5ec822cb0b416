"""Face-video records, CelebV-HQ's annotation file, and the conversations of favchat's progressive training stages.

A record describes one face video (JSON list or JSON Lines, one record per line):

```json
{"id": "clip-001", "video": "clips/clip-001.mp4",
 "summary": "A young woman with long wavy hair talks, smiling, then laughs.",
 "qa": [{"question": "Is she wearing glasses?", "answer": "No, she is not.", "kind": "appearance"}],
 "attributes": {"appearance": ["young", "long_hair", "wavy_hair"],
                "action": ["talk", {"name": "laugh", "start_sec": 2.1, "end_sec": 3.0}],
                "emotion": [{"emotion": "neutral", "start_sec": 0, "end_sec": 1.8},
                            {"emotion": "happy", "start_sec": 1.8, "end_sec": 3.0}]},
 "quality": 0.82}
```

`read_records` checks every record and reports all problems at once as a `ConfigError`, each naming the file, the
line (JSONL) or the record index (JSON) and the field:
`data.jsonl:7: attributes.appearance[2]: unknown appearance attribute 'Eyeglass' (did you mean 'eyeglasses'?)`.
`read_celebvhq` reads CelebV-HQ's `celebvhq_info.json` into the same records. `to_conversations` turns records
into the conversations of a stage: `summaries`, `qa`, `attributes` or `emotion`. `FaceVideoDataset` and
`CelebVHQDataset` serve them to training and `omnimm eval`.
"""

from __future__ import annotations

import json
import math
import random
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omnimm.errors import ConfigError, ConfigIssue
from omnimm.files import NotUTF8, atomic_write_text, decode_utf8
from omnimm.videollm.data import MediaDataset
from omnimm.videollm.processor import VideoLLMProcessor
from omnimm_plugins.favchat.attributes import (
    ACTION,
    ACTION_NAMES,
    APPEARANCE,
    APPEARANCE_NAMES,
    GROUPS,
    FaceAttributes,
    Group,
    Segment,
    UnknownLabelError,
    closest,
    emotion_aliases,
    emotion_vocabulary,
    lookup,
)
from omnimm_plugins.favchat.data_configs import DESCRIBE_PROMPTS, CelebVHQDataConfig, FaceVideoDataConfig

Task = Literal["summaries", "qa", "attributes", "emotion"]
TASKS: tuple[Task, ...] = ("summaries", "qa", "attributes", "emotion")

MAX_ISSUES = 20
"""At most this many problems are listed in one error (the count of the rest follows)."""

RECORD_FIELDS = ("id", "video", "summary", "qa", "attributes", "quality", "meta")
QA_FIELDS = ("question", "answer", "kind", "choices")
ATTRIBUTE_FIELDS = ("appearance", "action", "emotion")
YES_NO = ("yes", "no")


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    kind: str | None = None
    choices: tuple[str, ...] | None = None
    """The possible answers of a multiple-choice question (evaluators parse replies into one of them)."""


@dataclass
class FaceVideoRecord:
    """One face video and what is known about it."""

    id: str
    video: str
    summary: str | None = None
    qa: list[QAPair] = field(default_factory=list)
    attributes: FaceAttributes | None = None
    quality: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The record as `read_records` reads it (fields that are not set are left out)."""
        data: dict[str, Any] = {"id": self.id, "video": self.video}
        if self.summary is not None:
            data["summary"] = self.summary
        if self.qa:
            data["qa"] = [
                {
                    "question": p.question,
                    "answer": p.answer,
                    **({"kind": p.kind} if p.kind else {}),
                    **({"choices": list(p.choices)} if p.choices else {}),
                }
                for p in self.qa
            ]
        if self.attributes is not None:
            data["attributes"] = self.attributes.to_dict()
        if self.quality is not None:
            data["quality"] = self.quality
        if self.meta:
            data["meta"] = self.meta
        return data


# -- reading records ---------------------------------------------------------------------------------------------


class _Issues:
    """Problems found so far, each with its field path and, for JSON Lines, its line."""

    def __init__(self) -> None:
        self.items: list[ConfigIssue] = []

    def add(self, path: str, message: str, line: int | None = None) -> None:
        self.items.append(ConfigIssue(path, message, line=line))

    def raise_if_any(self, source: str, title: str) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_ISSUES]
        if len(self.items) > MAX_ISSUES:
            shown.append(ConfigIssue("", f"... and {len(self.items) - MAX_ISSUES} more problem(s)"))
        raise ConfigError(shown, source=source, title=title)


@dataclass(frozen=True)
class _At:
    """Where a value sits: a field path prefix and, in JSON Lines, the line."""

    prefix: str
    line: int | None

    def path(self, *parts: str | int) -> str:
        text = self.prefix
        for part in parts:
            if isinstance(part, int):
                text += f"[{part}]"
            elif part.startswith("["):
                text += part
            else:
                text += f".{part}" if text else part
        return text


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _unknown_key(key: str, allowed: Sequence[str]) -> str:
    close = closest(key, allowed)
    hint = f" (did you mean {close!r}?)" if close else f" (allowed: {', '.join(allowed)})"
    return f"unknown field {key!r}{hint}"


def _read_text(path: Path, what: str) -> str:
    """The file as text; a missing file is `FileNotFoundError`, bytes that are not UTF-8 one `ConfigError` line."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return decode_utf8(path.read_bytes())
    except NotUTF8 as bad:
        raise ConfigError([ConfigIssue("", bad.detail, line=bad.line)], source=str(path)) from None


def _decode_error(error: json.JSONDecodeError, text: str, *, last: bool = True) -> str:
    """The parser's complaint, and a hint when the text stops in the middle of a value (a cut-off file)."""
    hint = ""
    if error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string"):
        hint = "; the text ends in the middle of a value" + (" (is the file truncated?)" if last else "")
    elif error.msg == "Extra data":
        hint = "; one record per line is JSON Lines: name the file .jsonl"
    return f"invalid JSON: {error.msg} (column {error.colno}){hint}"


def _parse_json(path: Path, text: str) -> list[tuple[_At, Any]]:
    """The raw records with where each one sits: `(line, record)` for JSON Lines, `([index], record)` for JSON."""
    if not text.strip():
        raise ConfigError([ConfigIssue("", "the file is empty: no records", line=1)], source=str(path))
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        issues = _Issues()
        rows: list[tuple[_At, Any]] = []
        lines = text.splitlines()
        last = max(number for number, line in enumerate(lines, 1) if line.strip())
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append((_At("", number), json.loads(line)))
            except json.JSONDecodeError as error:
                issues.add("", _decode_error(error, line, last=number == last), line=number)
        issues.raise_if_any(str(path), "face video records")
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError([ConfigIssue("", _decode_error(error, text), line=error.lineno)], source=str(path)) from None
    if isinstance(data, dict) and "clips" in data:
        message = "this is CelebV-HQ's annotation file, not a list of records: read it with favchat/celebvhq"
        raise ConfigError([ConfigIssue("", message, line=1)], source=str(path))
    if not isinstance(data, list):
        message = f"expected a list of records (or JSON Lines, one per line), got {_json_type(data)}"
        raise ConfigError([ConfigIssue("", message, line=1)], source=str(path))
    return [(_At(f"[{index}]", None), record) for index, record in enumerate(data)]


def read_records(path: str | Path, *, emotions: str | Sequence[str] = "celebvhq") -> list[FaceVideoRecord]:
    """Read and check face-video records (JSON list, or JSON Lines for `.jsonl`).

    `emotions` is the vocabulary emotion labels must come from: `celebvhq` (default), `dfew`, `mafw` or a list.
    Every problem is collected and raised together as one `ConfigError`.
    """
    path = Path(path)
    rows = _parse_json(path, _read_text(path, "face video records"))
    vocabulary = emotion_vocabulary(emotions)
    aliases = emotion_aliases(emotions)
    issues = _Issues()
    records: list[FaceVideoRecord] = []
    seen: dict[str, _At] = {}
    for at, raw in rows:
        record = _record(raw, at, vocabulary, aliases, issues)
        if record is None:
            continue
        if record.id in seen:
            first = seen[record.id]
            where = f"line {first.line}" if first.line is not None else f"record {first.prefix}"
            issues.add(at.path("id"), f"duplicate id {record.id!r} (first at {where})", at.line)
            continue
        seen[record.id] = at
        records.append(record)
    issues.raise_if_any(str(path), "face video records")
    return records


def write_records(records: Iterable[FaceVideoRecord], path: str | Path) -> Path:
    """Write records as JSON Lines (`.jsonl`) or a JSON list (any other suffix), atomically."""
    target = Path(path)
    rows = [record.to_dict() for record in records]
    if target.suffix.lower() in (".jsonl", ".ndjson"):
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    else:
        text = json.dumps(rows, ensure_ascii=False, indent=1) + "\n"
    return atomic_write_text(target, text)


def _record(
    raw: Any, at: _At, vocabulary: Sequence[str], aliases: dict[str, str], issues: _Issues
) -> FaceVideoRecord | None:
    if not isinstance(raw, dict):
        issues.add(at.path(), f"a record must be an object, got {_json_type(raw)}", at.line)
        return None
    before = len(issues.items)
    for key in raw:
        if key not in RECORD_FIELDS:
            issues.add(at.path(key), _unknown_key(key, RECORD_FIELDS), at.line)
    record_id = raw.get("id")
    if isinstance(record_id, int) and not isinstance(record_id, bool):
        record_id = str(record_id)
    if not isinstance(record_id, str) or not record_id.strip():
        issues.add(at.path("id"), _needs("a non-empty string id", raw, "id"), at.line)
    video = raw.get("video")
    if not isinstance(video, str) or not video.strip():
        issues.add(at.path("video"), _needs("the video file (a non-empty string)", raw, "video"), at.line)
    summary = raw.get("summary")
    if summary is not None and not isinstance(summary, str):
        issues.add(at.path("summary"), f"expected a string, got {_json_type(summary)}", at.line)
    qa = _qa(raw.get("qa"), at, issues)
    attributes = None
    if raw.get("attributes") is not None:
        attributes = _attributes(raw["attributes"], at, vocabulary, aliases, issues)
    quality = raw.get("quality")
    if quality is not None and not _is_number(quality):
        issues.add(at.path("quality"), f"expected a number, got {_json_type(quality)}", at.line)
    meta = raw.get("meta")
    if meta is not None and not isinstance(meta, dict):
        issues.add(at.path("meta"), f"expected an object, got {_json_type(meta)}", at.line)
    if len(issues.items) > before:
        return None
    return FaceVideoRecord(
        id=record_id, video=video, summary=summary, qa=qa, attributes=attributes, quality=quality, meta=meta or {}
    )


def _needs(what: str, raw: dict[str, Any], key: str) -> str:
    return f"missing: needs {what}" if key not in raw else f"needs {what}, got {_json_type(raw[key])}"


def _qa(value: Any, at: _At, issues: _Issues) -> list[QAPair]:
    if value is None:
        return []
    if not isinstance(value, list):
        issues.add(at.path("qa"), f"expected a list of {{question, answer}} objects, got {_json_type(value)}", at.line)
        return []
    pairs = []
    for index, item in enumerate(value):
        where = at.path("qa", index)
        if not isinstance(item, dict):
            issues.add(where, f"expected a {{question, answer}} object, got {_json_type(item)}", at.line)
            continue
        for key in item:
            if key not in QA_FIELDS:
                issues.add(at.path("qa", index, key), _unknown_key(key, QA_FIELDS), at.line)
        question, answer, kind = item.get("question"), item.get("answer"), item.get("kind")
        ok = True
        for name, text in (("question", question), ("answer", answer)):
            if not isinstance(text, str) or not text.strip():
                issues.add(at.path("qa", index, name), _needs("a non-empty string", item, name), at.line)
                ok = False
        if kind is not None and not isinstance(kind, str):
            issues.add(at.path("qa", index, "kind"), f"expected a string, got {_json_type(kind)}", at.line)
            ok = False
        choices = item.get("choices")
        if choices is not None and not (
            isinstance(choices, list) and choices and all(isinstance(c, str) and c.strip() for c in choices)
        ):
            issues.add(at.path("qa", index, "choices"), "expected a non-empty list of strings", at.line)
            ok = False
        if ok:
            pairs.append(QAPair(question, answer, kind, tuple(choices) if choices else None))
    return pairs


def _attributes(
    value: Any, at: _At, vocabulary: Sequence[str], aliases: dict[str, str], issues: _Issues
) -> FaceAttributes | None:
    if not isinstance(value, dict):
        issues.add(at.path("attributes"), f"expected an object, got {_json_type(value)}", at.line)
        return None
    for key in value:
        if key not in ATTRIBUTE_FIELDS:
            issues.add(at.path("attributes", key), _unknown_key(key, ATTRIBUTE_FIELDS), at.line)
    appearance = None
    if value.get("appearance") is not None:
        appearance = _appearance(value["appearance"], at, issues)
    action = None
    if value.get("action") is not None:
        action = _actions(value["action"], at, issues)
    emotion = _emotion(value.get("emotion"), at, at.path("attributes", "emotion"), vocabulary, aliases, issues)
    return FaceAttributes(appearance=appearance, action=action, emotion=emotion)


def _name(group: Group, value: Any, where: str, line: int | None, issues: _Issues, **vocab: Any) -> str | None:
    if not isinstance(value, str):
        issues.add(where, f"expected a name (a string), got {_json_type(value)}", line)
        return None
    try:
        return lookup(group, value, **vocab)
    except UnknownLabelError as error:
        issues.add(where, str(error), line)
        return None


def _appearance(value: Any, at: _At, issues: _Issues) -> tuple[str, ...]:
    if not isinstance(value, list):
        where = at.path("attributes", "appearance")
        issues.add(where, f"expected a list of attribute names, got {_json_type(value)}", at.line)
        return ()
    names: list[str] = []
    for index, item in enumerate(value):
        where = at.path("attributes", "appearance", index)
        name = _name("appearance", item, where, at.line, issues)
        if name is not None and name in names:
            issues.add(where, f"{name!r} is listed twice", at.line)
        elif name is not None:
            names.append(name)
    return tuple(names)


def _times(item: dict[str, Any], where: str, line: int | None, issues: _Issues) -> tuple[float | None, float | None]:
    """`start_sec` and `end_sec` of a segment: both or neither, numbers >= 0, the end not before the start."""
    start, end = item.get("start_sec"), item.get("end_sec")
    if start is None and end is None:
        return None, None
    good = True
    for key, number in (("start_sec", start), ("end_sec", end)):
        if number is None:
            other = "end_sec" if key == "start_sec" else "start_sec"
            issues.add(f"{where}.{key}", f"missing: a segment with {other} needs {key} too", line)
            good = False
        elif not _is_number(number) or number < 0:
            issues.add(f"{where}.{key}", f"expected seconds (a number >= 0), got {number!r}", line)
            good = False
    if good and end < start:
        issues.add(f"{where}.end_sec", f"ends ({end}) before it starts ({start})", line)
        good = False
    return (float(start), float(end)) if good else (None, None)


def _actions(value: Any, at: _At, issues: _Issues) -> tuple[Segment, ...]:
    if not isinstance(value, list):
        where = at.path("attributes", "action")
        issues.add(where, f"expected a list of action names or segments, got {_json_type(value)}", at.line)
        return ()
    segments = []
    for index, item in enumerate(value):
        where = at.path("attributes", "action", index)
        if isinstance(item, dict):
            for key in item:
                if key not in ("name", "start_sec", "end_sec"):
                    issues.add(f"{where}.{key}", _unknown_key(key, ("name", "start_sec", "end_sec")), at.line)
            if "name" not in item:
                issues.add(f"{where}.name", "missing: a segment needs the action's name", at.line)
                continue
            name = _name("action", item["name"], f"{where}.name", at.line, issues)
            start, end = _times(item, where, at.line, issues)
        else:
            name = _name("action", item, where, at.line, issues)
            start = end = None
        if name is not None:
            segments.append(Segment(name, start, end))
    return tuple(segments)


def _emotion(
    value: Any, at: _At, where: str, vocabulary: Sequence[str], aliases: dict[str, str], issues: _Issues
) -> str | tuple[Segment, ...] | None:
    """A label, a list of `{emotion, start_sec, end_sec}` segments, or CelebV-HQ's `{sep_flag, labels}` form."""
    vocab = {"vocabulary": vocabulary, "aliases": aliases}
    if value is None:
        return None
    if isinstance(value, dict) and ("sep_flag" in value or "labels" in value):
        flag, labels = value.get("sep_flag"), value.get("labels")
        if not isinstance(flag, bool):
            issues.add(f"{where}.sep_flag", f"expected true or false, got {_json_type(flag)}", at.line)
            return None
        if flag != isinstance(labels, list):
            expected = "a list of segments" if flag else "one label"
            issues.add(f"{where}.labels", f"sep_flag is {str(flag).lower()}, so labels must be {expected}", at.line)
            return None
        return _emotion(labels, at, f"{where}.labels", vocabulary, aliases, issues)
    if isinstance(value, str):
        return _name("emotion", value, where, at.line, issues, **vocab)
    if not isinstance(value, list):
        issues.add(where, f"expected a label or a list of segments, got {_json_type(value)}", at.line)
        return None
    if not value:
        issues.add(where, "an empty list: give one label, or segments with emotion, start_sec and end_sec", at.line)
        return None
    segments = []
    for index, item in enumerate(value):
        spot = f"{where}[{index}]"
        if not isinstance(item, dict):
            issues.add(spot, f"expected an {{emotion, start_sec, end_sec}} object, got {_json_type(item)}", at.line)
            continue
        for key in item:
            if key not in ("emotion", "start_sec", "end_sec"):
                issues.add(f"{spot}.{key}", _unknown_key(key, ("emotion", "start_sec", "end_sec")), at.line)
        if "start_sec" not in item or "end_sec" not in item:
            issues.add(spot, "a segment needs emotion, start_sec and end_sec", at.line)
            continue
        label = _name("emotion", item.get("emotion"), f"{spot}.emotion", at.line, issues, **vocab)
        start, end = _times(item, spot, at.line, issues)
        if label is not None and start is not None:
            segments.append(Segment(label, start, end))
    return tuple(segments) if len(segments) == len(value) else None


# -- CelebV-HQ ---------------------------------------------------------------------------------------------------


def read_celebvhq(path: str | Path, *, video_suffix: str = ".mp4") -> list[FaceVideoRecord]:
    """CelebV-HQ's `celebvhq_info.json` as records: one per clip, `video` = `<clip id><video_suffix>`.

    The 0/1 vectors are decoded with the file's own `meta_info` mappings (CelebV-HQ's names, any case; the schema's
    order when `meta_info` is missing); a vector of the wrong length, a value other than 0/1 or an unknown label is
    an error naming the clip. `ytb_id`, `duration`, `bbox` and `version` are kept in `meta`.
    """
    path = Path(path)
    source = str(path)
    text = _read_text(path, "CelebV-HQ annotation file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError([ConfigIssue("", _decode_error(error, text), line=error.lineno)], source=source) from None
    if not isinstance(data, dict) or not isinstance(data.get("clips"), dict):
        message = "expected CelebV-HQ's annotation object: {meta_info: {...}, clips: {<clip id>: {...}}}"
        raise ConfigError([ConfigIssue("", message, line=1)], source=source)
    issues = _Issues()
    meta_info = data.get("meta_info")
    if meta_info is not None and not isinstance(meta_info, dict):
        issues.add("meta_info", f"expected an object, got {_json_type(meta_info)}")
        meta_info = None
    appearance_map = _mapping(meta_info, "appearance", APPEARANCE_NAMES, issues)
    action_map = _mapping(meta_info, "action", ACTION_NAMES, issues)
    issues.raise_if_any(source, "CelebV-HQ annotations")
    records = []
    for clip_id, clip in data["clips"].items():
        record = _celebvhq_clip(clip_id, clip, appearance_map, action_map, video_suffix, issues)
        if record is not None:
            records.append(record)
    issues.raise_if_any(source, "CelebV-HQ annotations")
    return records


def _mapping(meta_info: dict[str, Any] | None, group: Group, default: tuple[str, ...], issues: _Issues) -> list[str]:
    key = f"{group}_mapping"
    if meta_info is None or key not in meta_info:
        return list(default)
    names = meta_info[key]
    if not isinstance(names, list) or not names:
        issues.add(f"meta_info.{key}", f"expected a list of {group} names, got {_json_type(names)}")
        return list(default)
    mapping: list[str] = []
    for index, item in enumerate(names):
        name = _name(group, item, f"meta_info.{key}[{index}]", None, issues)
        if name is not None and name in mapping:
            issues.add(f"meta_info.{key}[{index}]", f"{name!r} is listed twice")
        mapping.append(name or "")
    return mapping


def _celebvhq_clip(
    clip_id: str,
    clip: Any,
    appearance_map: list[str],
    action_map: list[str],
    video_suffix: str,
    issues: _Issues,
) -> FaceVideoRecord | None:
    where = f"clips.{clip_id}"
    if not isinstance(clip, dict):
        issues.add(where, f"clip {clip_id!r}: expected an object, got {_json_type(clip)}")
        return None
    attributes = clip.get("attributes")
    if not isinstance(attributes, dict):
        issues.add(f"{where}.attributes", f"clip {clip_id!r}: needs an attributes object")
        return None
    before = len(issues.items)
    appearance = _vector(clip_id, attributes.get("appearance"), appearance_map, "appearance", where, issues)
    action = _vector(clip_id, attributes.get("action"), action_map, "action", where, issues)
    at = _At(f"{where}.attributes", None)
    emotion_value = attributes.get("emotion")
    emotion = None
    if emotion_value is not None:
        if not isinstance(emotion_value, dict):
            found = _json_type(emotion_value)
            issues.add(at.path("emotion"), f"clip {clip_id!r}: expected {{sep_flag, labels}}, got {found}")
        else:
            vocabulary, aliases = emotion_vocabulary("celebvhq"), emotion_aliases("celebvhq")
            emotion = _emotion(emotion_value, at, at.path("emotion"), vocabulary, aliases, issues)
    if len(issues.items) > before:
        return None
    meta = {key: clip[key] for key in ("ytb_id", "duration", "bbox", "version") if key in clip}
    return FaceVideoRecord(
        id=clip_id,
        video=f"{clip_id}{video_suffix}",
        attributes=FaceAttributes(
            appearance=appearance,
            action=None if action is None else tuple(Segment(name) for name in action),
            emotion=emotion,
        ),
        meta=meta,
    )


def _vector(
    clip_id: str, values: Any, mapping: list[str], group: Group, where: str, issues: _Issues
) -> tuple[str, ...] | None:
    """The names whose entry is 1 in a clip's 0/1 vector (None when the clip has no such vector)."""
    spot = f"{where}.attributes.{group}"
    if values is None:
        return None
    if not isinstance(values, list):
        issues.add(spot, f"clip {clip_id!r}: expected a list of 0/1 values, got {_json_type(values)}")
        return None
    if len(values) != len(mapping):
        issues.add(
            spot,
            f"clip {clip_id!r} has {len(values)} {group} values, expected {len(mapping)} "
            f"(one per name of meta_info.{group}_mapping)",
        )
        return None
    names = []
    for index, value in enumerate(values):
        if not _is_number(value) or value not in (0, 1):
            issues.add(f"{spot}[{index}]", f"clip {clip_id!r}: expected 0 or 1, got {value!r}")
        elif value == 1:
            names.append(mapping[index])
    return tuple(names)


# -- conversations -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversation:
    """One training or evaluation item: a video, `(role, text)` turns, and what evaluators need to know."""

    id: str
    video: str
    turns: tuple[tuple[str, str], ...]
    meta: dict[str, Any]

    def to_record(self, visual_token: str = "<video>") -> dict[str, Any]:
        """Valley / LLaVA conversation JSON (what `omnimm/conversations` reads), the visual token before the first
        question."""
        turns = []
        for position, (role, text) in enumerate(self.turns):
            value = f"{visual_token}\n{text}" if position == 0 else text
            turns.append({"from": "human" if role == "user" else "gpt", "value": value})
        return {"id": self.id, "video": self.video, "conversations": turns, "meta": dict(self.meta)}


@dataclass
class Converted:
    """The conversations of a stage, and how many records were left out and why."""

    conversations: list[Conversation]
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def describe_prompt(record_id: str, prompts: Sequence[str] = DESCRIBE_PROMPTS) -> str:
    """The describe prompt of a video: the same one for the same id, every run."""
    return prompts[zlib.crc32(record_id.encode("utf-8")) % len(prompts)]


def emotion_question(position: Literal["start", "end"] | None, choices: Sequence[str] | None) -> str:
    """The emotion question: for the whole clip, or at its start or end; with `choices`, it lists the answers."""
    when = {"start": " at the start of the clip", "end": " at the end of the clip", None: ""}[position]
    question = f"What emotion does the person show{when}?"
    return f"{question} Answer with one of: {', '.join(choices)}." if choices else question


def to_conversations(
    records: Iterable[FaceVideoRecord],
    task: Task,
    *,
    min_quality: float | None = None,
    prompts: Sequence[str] = DESCRIBE_PROMPTS,
    multi_turn: bool = False,
    emotions: str | Sequence[str] = "celebvhq",
    groups: Sequence[Group] = GROUPS,
    negatives: Literal["balanced", "all", "none"] = "balanced",
    list_choices: bool = True,
    seed: int = 0,
) -> Converted:
    """The conversations of one stage.

    - `summaries` (stage 1): the summary answers a describe prompt (one of `prompts`, picked from the id).
    - `qa` (stage 2): each QA pair is a conversation (`multi_turn`: a video's pairs are one conversation).
    - `attributes`: generated questions: "Is the person wearing eyeglasses?" -> "Yes."/"No." for appearance and
      actions (`negatives` says how many that do not hold), "What emotion does the person show?" -> the label (for
      segmented emotion: at the start and at the end of the clip).
    - `emotion`: only the emotion questions.

    With `min_quality`, records whose `quality` is below it or missing are left out first.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (expected one of: {', '.join(TASKS)})")
    vocabulary = emotion_vocabulary(emotions)
    result = Converted([])
    for record in records:
        if min_quality is not None:
            if record.quality is None:
                result.skip("no quality")
                continue
            if record.quality < min_quality:
                result.skip(f"quality below {min_quality}")
                continue
        if task == "summaries":
            _summary(record, prompts, result)
        elif task == "qa":
            _qa_turns(record, multi_turn, result)
        else:
            wanted = ("emotion",) if task == "emotion" else tuple(groups)
            _attribute_questions(record, wanted, vocabulary, negatives, list_choices, seed, result)
    return result


def _summary(record: FaceVideoRecord, prompts: Sequence[str], result: Converted) -> None:
    if not record.summary or not record.summary.strip():
        result.skip("no summary")
        return
    turns = (("user", describe_prompt(record.id, prompts)), ("assistant", record.summary.strip()))
    result.conversations.append(
        Conversation(record.id, record.video, turns, {"id": record.id, "video_id": record.id, "kind": "summary"})
    )


def _qa_turns(record: FaceVideoRecord, multi_turn: bool, result: Converted) -> None:
    if not record.qa:
        result.skip("no QA pairs")
        return
    if multi_turn:
        turns = tuple(turn for p in record.qa for turn in (("user", p.question), ("assistant", p.answer)))
        meta = {"id": record.id, "video_id": record.id, "kind": "qa", "turns": len(record.qa)}
        result.conversations.append(Conversation(record.id, record.video, turns, meta))
        return
    for number, pair in enumerate(record.qa):
        item_id = f"{record.id}/qa{number}"
        meta = {"id": item_id, "video_id": record.id, "kind": "qa", "qa_kind": pair.kind}
        if pair.choices:
            meta["choices"] = list(pair.choices)
        turns = (("user", pair.question), ("assistant", pair.answer))
        result.conversations.append(Conversation(item_id, record.video, turns, meta))


def _attribute_questions(
    record: FaceVideoRecord,
    groups: Sequence[Group],
    vocabulary: Sequence[str],
    negatives: str,
    list_choices: bool,
    seed: int,
    result: Converted,
) -> None:
    attributes = record.attributes
    if attributes is None or not any(attributes.annotated(group) for group in groups):
        result.skip("no attributes" if attributes is None else f"no {'/'.join(groups)} annotation")
        return
    for group in groups:
        if group == "emotion":
            _emotion_questions(record, vocabulary, list_choices, result)
            continue
        if not attributes.annotated(group):
            continue
        present = set(attributes.appearance or ()) if group == "appearance" else set(attributes.actions)
        schema = APPEARANCE if group == "appearance" else ACTION
        absent = [a for a in schema if a.name not in present]
        if negatives == "all":
            asked_absent = absent
        elif negatives == "balanced":
            rng = random.Random(f"{seed}/{record.id}/{group}")
            asked_absent = rng.sample(absent, min(len(present), len(absent)))
        else:
            asked_absent = []
        asked = {a.name for a in asked_absent} | present
        for item in schema:
            if item.name not in asked:
                continue
            answer = "yes" if item.name in present else "no"
            item_id = f"{record.id}/{group}/{item.name}"
            meta = {
                "id": item_id,
                "video_id": record.id,
                "kind": "attribute",
                "group": group,
                "attribute": item.name,
                "choices": list(YES_NO),
                "answer": answer,
            }
            turns = (("user", item.question), ("assistant", f"{answer.capitalize()}."))
            result.conversations.append(Conversation(item_id, record.video, turns, meta))


def _emotion_questions(
    record: FaceVideoRecord, vocabulary: Sequence[str], list_choices: bool, result: Converted
) -> None:
    attributes = record.attributes
    if attributes is None or attributes.emotion is None:
        return
    if isinstance(attributes.emotion, str) or len({s.label for s in attributes.emotion}) == 1:
        asked: list[tuple[Literal["start", "end"] | None, str | None]] = [(None, attributes.emotion_at("start"))]
    else:
        asked = [("start", attributes.emotion_at("start")), ("end", attributes.emotion_at("end"))]
    for position, label in asked:
        if label is None:
            continue
        name = "emotion" if position is None else f"emotion@{position}"
        item_id = f"{record.id}/{name}"
        meta = {
            "id": item_id,
            "video_id": record.id,
            "kind": "emotion",
            "group": "emotion",
            "attribute": name,
            "choices": list(vocabulary),
            "answer": label,
        }
        if position is not None:
            meta["segment"] = position
        question = emotion_question(position, vocabulary if list_choices else None)
        turns = (("user", question), ("assistant", label))
        result.conversations.append(Conversation(item_id, record.video, turns, meta))


# -- datasets ----------------------------------------------------------------------------------------------------


class _ConversationSet(MediaDataset):
    """Conversations about face videos under one media folder."""

    def __init__(
        self, converted: Converted, root: Path, limit: int | None, processor: VideoLLMProcessor, cache: bool
    ) -> None:
        super().__init__(processor, cache=cache)
        self.root = root
        self.conversations = converted.conversations[:limit]
        self.skipped_records = dict(converted.skipped)

    def __len__(self) -> int:
        return len(self.conversations)

    def item(self, index: int) -> tuple[str | None, Sequence[tuple[str, str]]]:
        conversation = self.conversations[index]
        return str(self.root / conversation.video), list(conversation.turns)

    def meta(self, index: int) -> dict[str, Any]:
        return dict(self.conversations[index].meta)

    def report(self) -> list[str]:
        lines = super().report()
        if self.skipped_records:
            reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped_records.items()))
            lines.append(f"records left out: {reasons}")
        return lines


class FaceVideoDataset(_ConversationSet):
    """`favchat/videos`: favchat's face-video records as the conversations of one stage (see
    `FaceVideoDataConfig`)."""

    def __init__(self, config: FaceVideoDataConfig, *, processor: VideoLLMProcessor) -> None:
        self.config = config
        path = Path(config.path)
        records = read_records(path, emotions=config.emotions)
        converted = to_conversations(
            records,
            config.task,
            min_quality=config.min_quality,
            prompts=config.prompts,
            multi_turn=config.multi_turn,
            emotions=config.emotions,
            groups=config.groups,
            negatives=config.negatives,
            list_choices=config.list_choices,
            seed=config.seed,
        )
        root = Path(config.media_root) if config.media_root else path.parent
        super().__init__(converted, root, config.limit, processor, config.cache)


class CelebVHQDataset(_ConversationSet):
    """`favchat/celebvhq`: CelebV-HQ's clips as attribute or emotion questions (see `CelebVHQDataConfig`)."""

    def __init__(self, config: CelebVHQDataConfig, *, processor: VideoLLMProcessor) -> None:
        self.config = config
        path = Path(config.path)
        records = read_celebvhq(path, video_suffix=config.video_suffix)
        converted = to_conversations(
            records,
            config.task,
            emotions="celebvhq",
            groups=config.groups,
            negatives=config.negatives,
            list_choices=config.list_choices,
            seed=config.seed,
        )
        root = Path(config.media_root) if config.media_root else path.parent
        super().__init__(converted, root, config.limit, processor, config.cache)
