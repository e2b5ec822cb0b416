"""Semantic textual similarity data: the STS Benchmark files and plain CSVs of `sentence1, sentence2, score`.

Both readers collect every malformed row (with its line number) before raising one `ConfigError`, so a user fixes a
file in one pass.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from omnimm.errors import ConfigError, ConfigIssue
from omnimm.files import NotUTF8, decode_utf8

_MAX_ISSUES = 20


@dataclass(frozen=True)
class STSPair:
    sentence1: str
    sentence2: str
    score: float
    genre: str = ""


def read_stsb(folder: str | os.PathLike[str], split: str) -> list[STSPair]:
    """`sts-<split>.csv` of the STS Benchmark: tab-separated genre, file, year, id, score, sentence 1, sentence 2.

    Some rows carry extra trailing fields (sources of the sentences); only columns 1 and 5-7 are read.
    """
    file = Path(folder) / f"sts-{split}.csv"
    if not file.is_file():
        raise FileNotFoundError(f"STS-B split not found: {file}")
    pairs, issues = [], []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split("\t")
        if len(fields) < 7:
            issues.append(ConfigIssue("", f"expected at least 7 tab-separated fields, got {len(fields)}", line=number))
            continue
        try:
            score = float(fields[4])
        except ValueError:
            issues.append(ConfigIssue("score", f"not a number: {fields[4]!r}", line=number))
            continue
        pairs.append(STSPair(fields[5], fields[6], score, fields[0]))
    if issues:
        raise ConfigError(issues[:_MAX_ISSUES], source=str(file), title="STS-B data")
    return pairs


def read_sts_csv(path: str | os.PathLike[str], *, delimiter: str | None = None) -> list[STSPair]:
    """A CSV (or TSV) of `sentence1, sentence2, score`, with or without a header row naming those columns.

    The delimiter is sniffed when not given (comma, tab or semicolon).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"STS file not found: {file}")
    text = _read_utf8(file)
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",\t;").delimiter
        except csv.Error:
            delimiter = ","
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    start = 1 if rows and _is_header(rows[0]) else 0
    pairs, issues = [], []
    for number, row in enumerate(rows[start:], start=start + 1):
        if not row or all(not field.strip() for field in row):
            continue
        if len(row) != 3:
            message = f"expected 3 fields (sentence1, sentence2, score), got {len(row)}"
            issues.append(ConfigIssue("", message, line=number))
            continue
        try:
            score = float(row[2])
        except ValueError:
            issues.append(ConfigIssue("score", f"not a number: {row[2]!r}", line=number))
            continue
        if not row[0].strip() or not row[1].strip():
            issues.append(ConfigIssue("", "empty sentence", line=number))
            continue
        pairs.append(STSPair(row[0], row[1], score))
    if issues:
        raise ConfigError(issues[:_MAX_ISSUES], source=str(file), title="STS data")
    if not pairs:
        raise ConfigError([ConfigIssue("", "no sentence pairs")], source=str(file), title="STS data")
    return pairs


# A first row is a header only when it names the columns: a sentence pair with a bad score is a malformed row.
_SENTENCE_COLUMNS = {"sentence1", "sentence2", "sentence_1", "sentence_2", "sentence_a", "sentence_b", "s1", "s2"}
_SENTENCE_COLUMNS |= {"text1", "text2", "text_1", "text_2", "text_a", "text_b", "sent1", "sent2"}
_SCORE_COLUMNS = {"score", "label", "similarity", "similarity_score", "gold", "gold_score", "relatedness"}


def _is_header(row: list[str]) -> bool:
    if len(row) != 3:
        return False
    names = [" ".join(field.strip().lower().replace("-", "_").split()).replace(" ", "_") for field in row]
    return names[0] in _SENTENCE_COLUMNS and names[1] in _SENTENCE_COLUMNS and names[2] in _SCORE_COLUMNS


def _read_utf8(file: Path) -> str:
    try:
        return decode_utf8(file.read_bytes())
    except NotUTF8 as bad:
        raise ConfigError([ConfigIssue("", bad.detail, bad.line)], source=str(file), title="STS data") from None
