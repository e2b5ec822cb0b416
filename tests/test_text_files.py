"""`omnimm.files.decode_utf8` / `read_utf8`: where the first byte that is not UTF-8 sits, counted by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnimm.errors import StoreError
from omnimm.files import NotUTF8, decode_utf8, read_utf8


def test_a_byte_order_mark_is_dropped_and_text_passes_through():
    assert decode_utf8("\ufeffcafé\n".encode()) == "café\n"
    assert decode_utf8(b"") == ""


@pytest.mark.parametrize(
    ("raw", "line", "column", "offset", "byte"),
    [
        (b"\xff", 1, 1, 0, 0xFF),
        (b"ab\ncaf\xe9\n", 2, 4, 6, 0xE9),  # line 2 starts at offset 3: the bad byte is its 4th
        (b"l1\nl2\n\xcf\x80 \x80", 3, 4, 9, 0x80),  # a valid two-byte letter, then a lone continuation byte
        (b"\xc3\xa9\n\n\n\xc3(", 4, 1, 5, 0xC3),  # a lead byte without its continuation
    ],
)
def test_the_first_bad_byte_is_located(raw: bytes, line: int, column: int, offset: int, byte: int):
    with pytest.raises(NotUTF8) as caught:
        decode_utf8(raw)
    bad = caught.value
    assert (bad.line, bad.column, bad.offset, bad.byte) == (line, column, offset, byte)
    assert isinstance(bad, ValueError)


def test_read_utf8_raises_the_callers_error_class_with_file_and_line(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"fine\nsoft \xff light\n")
    with pytest.raises(StoreError) as caught:
        read_utf8(path, error=StoreError)
    assert str(caught.value) == f"{path}:2: not UTF-8 text (byte 0xff at column 6, offset 10); save it as UTF-8"
    path.write_text("ok\n", encoding="utf-8")
    assert read_utf8(path) == "ok\n"
