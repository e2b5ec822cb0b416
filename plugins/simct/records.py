"""Reading the gate's inputs: JSON Lines of `{prompt, response, [query_type]}`, several samples per prompt allowed."""

from __future__ import annotations

import json
import os
import unicodedata
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnimm.errors import ConfigError, ConfigIssue

ALLOWED_FIELDS = ("prompt", "response", "query_type", "id", "sample")
MAX_REPORTED = 20
"""Malformed lines listed in one error; the rest are counted (a binary file would otherwise print thousands)."""


class _LineError(ValueError):
    """One line's problem: the field it concerns ('' for the whole line) and what was expected."""

    def __init__(self, path: str, message: str, kind: str = "value_error") -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.kind = kind


@dataclass
class StageResponses:
    """One stage's responses, grouped by prompt (in file order)."""

    source: str
    responses: dict[str, list[str]] = field(default_factory=dict)
    query_types: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    """Prompt -> its record's `id`, where the file gives one (as a string: `7` and `"7"` match)."""

    @property
    def prompts(self) -> list[str]:
        return list(self.responses)

    @property
    def has_ids(self) -> bool:
        """Whether every prompt carries an `id`."""
        return bool(self.responses) and len(self.ids) == len(self.responses)

    def keys(self, by_id: bool) -> dict[str, str]:
        """Prompt -> the key it is matched on: its id, or its normalised text."""
        if by_id:
            return {prompt: f"id {self.ids[prompt]}" for prompt in self.responses}
        return {prompt: normalise_prompt(prompt) for prompt in self.responses}


def normalise_prompt(text: str) -> str:
    """NFKC, whitespace runs collapsed to one space, ends stripped: trailing spaces or a full-width letter do not
    make two prompts different."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def read_responses(path: str | os.PathLike[str]) -> StageResponses:
    """Read a stage's JSONL file; every malformed line is reported with its number (all of them, at once).

    An `id` names one prompt: the same id on two different prompts (after `normalise_prompt`), or two ids on one
    prompt, is an error on the later line (matching by id would otherwise merge or split prompts silently).
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"responses file not found: {file}")
    if not file.is_file():  # a folder, a device or a pipe: reading it would fail or never end
        raise ConfigError([ConfigIssue("", "not a regular file; expected a JSON Lines file")], source=str(file))
    stage = StageResponses(str(file))
    grouped: dict[str, list[str]] = defaultdict(list)
    issues: list[ConfigIssue] = []
    owners: dict[str, tuple[str, int]] = {}  # id -> (normalised prompt, first line)
    for number, record in _records(file, issues):
        if record.get("id") is not None and not _claim_id(stage, owners, record, number, issues):
            continue
        grouped[record["prompt"]].append(record["response"])
        if record.get("query_type") is not None:
            stage.query_types.setdefault(record["prompt"], record["query_type"])
    if issues:
        raise ConfigError(_capped(issues), source=str(file), title="responses")
    if not grouped:
        raise ConfigError([ConfigIssue("", "no responses in the file")], source=str(file))
    stage.responses = dict(grouped)
    return stage


def _claim_id(
    stage: StageResponses,
    owners: dict[str, tuple[str, int]],
    record: dict[str, Any],
    number: int,
    issues: list[ConfigIssue],
) -> bool:
    """Record the line's id for its prompt; False (with an issue) when it contradicts an earlier line."""
    identifier, prompt = str(record["id"]), record["prompt"]
    owner, first = owners.setdefault(identifier, (normalise_prompt(prompt), number))
    if owner != normalise_prompt(prompt):
        issues.append(ConfigIssue("id", f"{identifier!r} already names another prompt (line {first})", line=number))
        return False
    if stage.ids.setdefault(prompt, identifier) != identifier:
        issues.append(ConfigIssue("id", f"this prompt already has id {stage.ids[prompt]!r}", line=number))
        return False
    return True


def _records(file: Path, issues: list[ConfigIssue]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each valid line's number and record; a problem on a line goes to `issues` and the line is skipped."""
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = _parse_line(raw, first=number == 1, last=not raw.endswith(b"\n"))
                _check_record(record)
            except _LineError as error:
                issues.append(ConfigIssue(error.path, error.message, line=number, kind=error.kind))
                continue
            yield number, record


def _parse_line(raw: bytes, *, first: bool, last: bool) -> Any:
    try:
        text = raw.decode("utf-8-sig" if first else "utf-8")  # a byte-order mark from Windows editors is fine
    except UnicodeDecodeError as error:
        raise _LineError("", f"not UTF-8 text (byte {raw[error.start]:#04x} at column {error.start + 1})") from None
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except _LineError:
        raise
    except RecursionError:
        raise _LineError("", "invalid JSON: nested too deeply", kind="syntax") from None
    except json.JSONDecodeError as error:
        hint = " (the file ends mid-line: truncated?)" if last else ""
        raise _LineError("", f"invalid JSON: {error.msg} (column {error.colno}){hint}", kind="syntax") from None


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # JSON keeps the last of repeated keys silently; a record with two prompts is ambiguous, not a choice to make
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _LineError(key, "duplicate key (each field may appear once per record)")
        seen.add(key)
    return dict(pairs)


def _check_record(record: object) -> None:
    if not isinstance(record, dict):
        raise _LineError("", f"expected an object with 'prompt' and 'response', got {type(record).__name__}")
    for key in ("prompt", "response"):
        if key not in record:
            raise _LineError(key, "required field is missing")
        if not isinstance(record[key], str):
            raise _LineError(key, f"must be a string, got {type(record[key]).__name__}")
    unknown = sorted(set(record) - set(ALLOWED_FIELDS))
    if unknown:
        raise _LineError(unknown[0], f"unknown field (allowed: {', '.join(ALLOWED_FIELDS)})")
    if record.get("query_type") is not None and not isinstance(record["query_type"], str):
        raise _LineError("query_type", f"must be a string or null, got {type(record['query_type']).__name__}")
    for key in ("id", "sample"):
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
            raise _LineError(key, f"must be a string or an integer, got {type(value).__name__}")


def _capped(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    if len(issues) <= MAX_REPORTED:
        return issues
    rest = len(issues) - MAX_REPORTED
    return [*issues[:MAX_REPORTED], ConfigIssue("", f"and {rest} more malformed lines (not listed)")]


def write_responses(path: str | os.PathLike[str], rows: list[dict[str, str]]) -> Path:
    """Write records as JSON Lines, atomically."""
    from omnimm.files import atomic_write_text

    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
