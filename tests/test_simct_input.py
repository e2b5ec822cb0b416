"""simct's JSON Lines inputs from careless or hostile sources: each problem is one line naming the file and line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from omnimm import ConfigError
from omnimm_plugins.simct.records import MAX_REPORTED, read_responses

from .conftest import OMNIMM, run

pytestmark = pytest.mark.timeout(120)

GOOD = '{"prompt": "p", "response": "a"}\n'

# (file bytes, line at fault, field, what the message says)
HOSTILE = {
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000 + b"\n", 1, "", "invalid JSON: nested too deeply"),
    "nested inside a field": (
        b'{"prompt": "p", "response": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
        1,
        "",
        "nested too deeply",
    ),
    "duplicate key": (
        (GOOD + '{"prompt": "p", "response": "a", "prompt": "q"}\n').encode(),
        2,
        "prompt",
        "duplicate key",
    ),
    "not UTF-8": ((GOOD + GOOD).encode() + b'{"prompt": "p", "response": "caf\xe9"}\n', 3, "", "not UTF-8 text"),
    "truncated": ((GOOD + '{"prompt": "p", "resp').encode(), 2, "", "truncated"),
    "query_type an object": (b'{"prompt": "p", "response": "a", "query_type": {"k": 1}}\n', 1, "query_type", "string"),
    "sample a list": (b'{"prompt": "p", "response": "a", "sample": [1]}\n', 1, "sample", "string or an integer"),
    "a list, not an object": (b"[1, 2]\n", 1, "", "expected an object"),
    "response a number": (b'{"prompt": "p", "response": 3}\n', 1, "response", "must be a string"),
}


def write(tmp_path: Path, data: bytes, name: str = "stage.jsonl") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_lines_are_reported_with_file_line_and_field(tmp_path: Path, case: str):
    data, line, field, message = HOSTILE[case]
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        read_responses(path)
    issue = caught.value.issues[0]
    assert (issue.line, issue.path) == (line, field) and message in issue.message, caught.value
    assert f"{path}:{line}: " in str(caught.value)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_the_gate_command_prints_the_problem_and_exits_2(tmp_path: Path, case: str):
    data, line, _, message = HOSTILE[case]
    bad, good = write(tmp_path, data), write(tmp_path, GOOD.encode(), "good.jsonl")
    result = run([str(OMNIMM), "simct", "gate", str(good), str(bad)], timeout=120)
    assert result.returncode == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    assert f"{bad}:{line}: " in result.stderr and message in result.stderr, result.stderr


def test_a_byte_order_mark_and_a_missing_final_newline_are_fine(tmp_path: Path):
    path = write(tmp_path, b"\xef\xbb\xbf" + GOOD.encode() + b'{"prompt": "q", "response": "b"}')
    assert read_responses(path).responses == {"p": ["a"], "q": ["b"]}


def test_empty_files_folders_and_devices_are_bad_input(tmp_path: Path):
    empty = write(tmp_path, b"")
    with pytest.raises(ConfigError, match="no responses in the file"):
        read_responses(empty)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_responses(tmp_path)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_responses("/dev/zero")
    result = run([str(OMNIMM), "simct", "gate", "/dev/zero", str(empty)], timeout=120)
    assert result.returncode == 2 and "/dev/zero: not a regular file" in result.stderr, result.output


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_exits_2_naming_it(tmp_path: Path):
    path = write(tmp_path, GOOD.encode())
    path.chmod(0)
    result = run([str(OMNIMM), "simct", "gate", str(path), str(path)], timeout=120)
    assert result.returncode == 2 and str(path) in result.stderr and "Traceback" not in result.stderr, result.output


def test_a_binary_file_lists_the_first_problems_and_counts_the_rest(tmp_path: Path):
    path = write(tmp_path, b"".join(bytes([0xFF, n % 200 + 1, 0x0A]) for n in range(5000)))
    with pytest.raises(ConfigError) as caught:
        read_responses(path)
    assert len(caught.value.issues) == MAX_REPORTED + 1
    assert caught.value.issues[-1].message == f"and {5000 - MAX_REPORTED} more malformed lines (not listed)"


def test_valid_rows_with_every_allowed_field_still_read(tmp_path: Path):
    rows = [
        {"prompt": "p", "response": "a", "query_type": "math", "id": 7, "sample": "0"},
        {"prompt": "p", "response": "b"},
    ]
    path = write(tmp_path, "".join(json.dumps(r) + "\n" for r in rows).encode())
    stage = read_responses(path)
    assert stage.responses == {"p": ["a", "b"]} and stage.query_types == {"p": "math"}
