"""Reading the gate's inputs: JSON Lines of `{prompt, response, [query_type]}`, several samples per prompt allowed."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from omnimm.errors import ConfigError, ConfigIssue


@dataclass
class StageResponses:
    """One stage's responses, grouped by prompt (in file order)."""

    source: str
    responses: dict[str, list[str]] = field(default_factory=dict)
    query_types: dict[str, str] = field(default_factory=dict)

    @property
    def prompts(self) -> list[str]:
        return list(self.responses)


def read_responses(path: str | os.PathLike[str]) -> StageResponses:
    """Read a stage's JSONL file; every malformed line is reported with its number (all of them, at once)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"responses file not found: {file}")
    stage = StageResponses(str(file))
    grouped: dict[str, list[str]] = defaultdict(list)
    issues: list[ConfigIssue] = []
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                issues.append(ConfigIssue("", f"invalid JSON: {error.msg}", line=number, kind="syntax"))
                continue
            problem = _problem(record)
            if problem:
                issues.append(ConfigIssue(problem[0], problem[1], line=number))
                continue
            grouped[record["prompt"]].append(record["response"])
            if record.get("query_type") is not None:
                stage.query_types.setdefault(record["prompt"], str(record["query_type"]))
    if issues:
        raise ConfigError(issues, source=str(file), title="responses")
    if not grouped:
        raise ConfigError([ConfigIssue("", "no responses in the file")], source=str(file))
    stage.responses = dict(grouped)
    return stage


def _problem(record: object) -> tuple[str, str] | None:
    if not isinstance(record, dict):
        return "", f"expected an object with 'prompt' and 'response', got {type(record).__name__}"
    for key in ("prompt", "response"):
        if key not in record:
            return key, "required field is missing"
        if not isinstance(record[key], str):
            return key, f"must be a string, got {type(record[key]).__name__}"
    unknown = sorted(set(record) - {"prompt", "response", "query_type", "id", "sample"})
    if unknown:
        return unknown[0], "unknown field (allowed: prompt, response, query_type, id, sample)"
    return None


def write_responses(path: str | os.PathLike[str], rows: list[dict[str, str]]) -> Path:
    """Write records as JSON Lines, atomically."""
    from omnimm.files import atomic_write_text

    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
