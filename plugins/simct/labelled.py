"""Your own labelled response pairs for training the response-wise classifier: JSON Lines or CSV/TSV with
`reference`, `candidate`, `label` (1 consistent, 0 inconsistent) and an optional `query_type` of your own naming.

```json
{"reference": "Paris is the capital.", "candidate": "The capital is Paris.", "label": 1, "query_type": "geo-qa"}
```
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from omnimm.errors import ConfigError, ConfigIssue
from omnimm.files import NotUTF8, decode_utf8
from omnimm_plugins.simct.stsb import LabelledPairs

COLUMNS = ("reference", "candidate", "label")
OPTIONAL = ("query_type", "id")
MAX_ISSUES = 20


def read_labelled_pairs(path: str | os.PathLike[str]) -> LabelledPairs:
    """Read a pairs file; every malformed line is reported with its number (the first 20), all at once."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"labelled pairs file not found (or not a file): {file}")
    try:
        text = decode_utf8(file.read_bytes())
    except NotUTF8 as bad:
        raise ConfigError([ConfigIssue("", bad.detail, line=bad.line)], source=str(file)) from None
    issues: list[ConfigIssue] = []
    rows = _jsonl(text, issues) if file.suffix.lower() in (".jsonl", ".json") else _csv(text, file, issues)
    records = []
    for line, row in rows:
        record = _check(row, line, issues)
        if record is not None:
            records.append(record)
    if issues:
        extra = len(issues) - MAX_ISSUES
        shown = issues[:MAX_ISSUES] + ([ConfigIssue("", f"and {extra} more problems")] if extra > 0 else [])
        raise ConfigError(shown, source=str(file), title="labelled pairs")
    labels = np.array([r["label"] for r in records], dtype=int)
    if len(records) < 10 or len(set(labels.tolist())) < 2:
        raise ConfigError(
            [
                ConfigIssue(
                    "label", f"need 10 or more pairs with both labels, got {len(records)} ({labels.sum()} with 1)"
                )
            ],
            source=str(file),
        )
    return LabelledPairs(
        [r["reference"] for r in records],
        [r["candidate"] for r in records],
        labels,
        [r.get("query_type") or "" for r in records],
        labels.astype(float),
    )


def _jsonl(text: str, issues: list[ConfigIssue]) -> list[tuple[int, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except (json.JSONDecodeError, RecursionError) as error:
            issues.append(ConfigIssue("", f"invalid JSON: {getattr(error, 'msg', 'nested too deeply')}", line=number))
    return rows


def _csv(text: str, file: Path, issues: list[ConfigIssue]) -> list[tuple[int, Any]]:
    delimiter = "\t" if file.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        issues.append(
            ConfigIssue("", f"the header must name {', '.join(COLUMNS)} (missing: {', '.join(missing)})", line=1)
        )
        return []
    return [(reader.line_num, row) for row in reader]


def _check(row: Any, line: int, issues: list[ConfigIssue]) -> dict[str, Any] | None:
    if not isinstance(row, dict):
        issues.append(ConfigIssue("", f"expected an object, got {type(row).__name__}", line=line))
        return None
    unknown = sorted(set(row) - set(COLUMNS) - set(OPTIONAL))
    if unknown and unknown != [None]:
        issues.append(ConfigIssue(str(unknown[0]), f"unknown field (allowed: {', '.join(COLUMNS + OPTIONAL)})", line))
        return None
    for key in ("reference", "candidate"):
        if not isinstance(row.get(key), str):
            issues.append(ConfigIssue(key, "required: a string", line=line))
            return None
    label = row.get("label")
    if isinstance(label, str) and label.strip() in ("0", "1"):
        label = int(label.strip())
    if label not in (0, 1) or isinstance(label, bool):
        issues.append(ConfigIssue("label", f"expected 1 (consistent) or 0 (inconsistent), got {label!r}", line=line))
        return None
    query_type = row.get("query_type")
    if query_type is not None and not isinstance(query_type, str):
        issues.append(ConfigIssue("query_type", f"must be a string, got {type(query_type).__name__}", line=line))
        return None
    return {"reference": row["reference"], "candidate": row["candidate"], "label": label, "query_type": query_type}
