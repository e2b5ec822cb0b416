"""Content parts -> text and one video or image: data URLs written to a private temporary file, local paths only
inside the folder given with `--allow-files` (resolved, so `..` and symbolic links cannot leave it)."""

from __future__ import annotations

import base64
import binascii
import mimetypes
import os
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnimm.serve.schemas import APIError, Message

MEDIA_TYPES = {"image_url": "image", "video_url": "video"}
_DEFAULT_SUFFIX = {"image": ".png", "video": ".mp4"}
_SUFFIXES = {"video/x-matroska": ".mkv", "video/webm": ".webm", "image/jpeg": ".jpg", "video/quicktime": ".mov"}


@dataclass
class Media:
    """Where one content part's video or image is: a data URL (`data`) or a file inside the allowed folder."""

    kind: str
    field: str
    """The request field it came from (`messages[0].content[1].video_url.url`), for error messages."""
    data: bytes | None = None
    suffix: str = ""
    path: Path | None = None


@dataclass
class Conversation:
    turns: list[tuple[str, str]]
    media: Media | None


def read_conversation(messages: Sequence[Message], allow_files: Path | None) -> Conversation:
    """`(role, text)` turns and the conversation's video or image (one at most, as the models take one)."""
    turns: list[tuple[str, str]] = []
    media: Media | None = None
    for index, message in enumerate(messages):
        text, found = read_content(message.content, f"messages[{index}].content", allow_files)
        for item in found:
            if media is not None:
                raise APIError(
                    400, f"{item.field}: one video or image per conversation ({media.field} is one)", param=item.field
                )
            media = item
        turns.append((message.role, text))
    if not any(role == "user" for role, _ in turns):
        raise APIError(400, "messages: a conversation needs a user message", param="messages")
    return Conversation(turns, media)


def read_content(content: Any, where: str, allow_files: Path | None) -> tuple[str, list[Media]]:
    """A message's text (its text parts joined by newlines) and its media parts."""
    if isinstance(content, str):
        return content, []
    if content is None:
        raise APIError(400, f"{where}: required field is missing", param=where)
    if not isinstance(content, list):
        raise APIError(400, f"{where}: expected text or a list of content parts", param=where)
    texts: list[str] = []
    media: list[Media] = []
    for number, part in enumerate(content):
        field = f"{where}[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise APIError(400, f"{field}.text: expected a string", param=f"{field}.text")
            texts.append(part["text"])
        elif kind in MEDIA_TYPES:
            media.append(_media(part, kind, field, allow_files))
        else:
            raise APIError(
                400, f"{field}.type: expected 'text', 'image_url' or 'video_url', got {kind!r}", param=f"{field}.type"
            )
    return "\n".join(texts), media


def _media(part: dict[str, Any], kind: str, field: str, allow_files: Path | None) -> Media:
    value = part.get(kind)
    url = value.get("url") if isinstance(value, dict) else value  # a bare string, as some clients send
    field = f"{field}.{kind}.url"
    if not isinstance(url, str) or not url:
        raise APIError(400, f"{field}: expected a data URL or a file path", param=field)
    media_kind = MEDIA_TYPES[kind]
    if url.startswith("data:"):
        data, suffix = decode_data_url(url, field, media_kind)
        return Media(media_kind, field, data=data, suffix=suffix)
    if url.startswith(("http://", "https://")):
        raise APIError(400, f"{field}: remote URLs are not fetched; send the file as a data URL", param=field)
    return Media(media_kind, field, path=confined_path(url, field, allow_files))


def decode_data_url(url: str, field: str, kind: str) -> tuple[bytes, str]:
    """The bytes of a base64 `data:` URL and a file suffix for its media type."""
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise APIError(400, f"{field}: expected a base64 data URL (data:<type>;base64,...)", param=field)
    mime = header[len("data:") : -len(";base64")].split(";")[0].strip().lower()
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{field}: the data URL is not valid base64", param=field) from None
    if not data:
        raise APIError(400, f"{field}: the data URL is empty", param=field)
    suffix = _SUFFIXES.get(mime) or (mimetypes.guess_extension(mime) if mime else None) or _DEFAULT_SUFFIX[kind]
    return data, suffix


def confined_path(url: str, field: str, allow_files: Path | None) -> Path:
    """A local file named by `file://` or a path, resolved; refused unless it lies inside `allow_files`."""
    if allow_files is None:
        raise APIError(
            400, f"{field}: local files are not served (start the server with --allow-files DIR)", param=field
        )
    text = urllib.parse.unquote(urllib.parse.urlparse(url).path) if url.startswith("file:") else url
    root = allow_files.resolve()
    path = (root / text).resolve()  # an absolute `text` replaces root; resolve() follows links and `..`
    if not path.is_relative_to(root):
        raise APIError(403, f"{field}: {text} is outside the allowed folder {root}", param=field, code="forbidden")
    if not path.is_file():
        raise APIError(400, f"{field}: no file {path}", param=field)
    return path


@contextmanager
def media_file(media: Media) -> Iterator[Path]:
    """A path to read the media from: the allowed file itself, or a private temporary copy of the data URL's bytes
    (removed afterwards)."""
    if media.path is not None:
        yield media.path
        return
    handle, name = tempfile.mkstemp(prefix="omnimm-serve-", suffix=media.suffix)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(media.data or b"")
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)
