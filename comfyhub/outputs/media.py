"""What kind of file an output is, and what a PNG says about itself.

ComfyUI's SaveImage writes the API graph into a PNG `tEXt` chunk named `prompt` (and
the page's workflow into `workflow`), before the image data. Reading those chunks
needs no image decoder: the reader below walks the chunk list up to the first `IDAT`,
so a 20 MB PNG costs a few kilobytes of reading. Other images get their size from
Pillow, which also reads only the header.
"""

from __future__ import annotations

import json
import mimetypes
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from comfyhub.outputs.history import finite

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A text chunk larger than this is not metadata we can use (a graph is a few hundred KB).
_MAX_TEXT_CHUNK = 32 << 20

IMAGE = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
VIDEO = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".gifv"}
AUDIO = {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".opus"}
# Files ComfyUI or its nodes write beside outputs that are not outputs.
_IGNORED = {".tmp", ".part", ".json", ".txt", ".log"}


def media_type(filename: str) -> str:
    ext = Path(filename).suffix.lower()
    if ext in IMAGE:
        return "image"
    if ext in VIDEO:
        return "video"
    if ext in AUDIO:
        return "audio"
    return "other"


def is_output_file(filename: str) -> bool:
    """Whether a file found in output/ is something a generation made."""
    return not filename.startswith(".") and Path(filename).suffix.lower() not in _IGNORED


def content_type(filename: str) -> str:
    guessed, _ = mimetypes.guess_type(filename)
    return guessed or "application/octet-stream"


@dataclass
class FileFacts:
    """What a file says about itself: size on disk, pixel size, embedded graph."""

    size: int
    mtime: float
    width: int | None = None
    height: int | None = None
    graph: dict | None = None
    # The prompt id comfyhub gave the prompt (job items carry it in a `comfyhub` chunk):
    # a file found without its history entry can still be tied to its prompt.
    prompt_id: str | None = None


def file_facts(path: Path) -> FileFacts:
    """Read a file's facts (blocking: call it in a thread). Raises OSError if unreadable."""
    st = path.stat()
    facts = FileFacts(size=st.st_size, mtime=st.st_mtime)
    if media_type(path.name) != "image":
        return facts
    with open(path, "rb") as f:
        head = f.read(8)
        if head == _PNG_SIGNATURE:
            _read_png(f, facts)
            return facts
    _read_image_size(path, facts)
    return facts


def _read_png(f, facts: FileFacts) -> None:
    texts: dict[str, str] = {}
    while True:
        header = f.read(8)
        if len(header) < 8:
            break
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IDAT" or kind == b"IEND":
            break
        if length > _MAX_TEXT_CHUNK:
            break
        data = f.read(length)
        f.seek(4, 1)  # CRC
        if kind == b"IHDR" and len(data) >= 8:
            facts.width, facts.height = struct.unpack(">II", data[:8])
        elif kind in (b"tEXt", b"zTXt", b"iTXt"):
            key, value = _text_chunk(kind, data)
            if key:
                texts[key] = value
    facts.graph = _json_object(texts.get("prompt"))
    ours = _json_object(texts.get("comfyhub")) or {}
    prompt_id = ours.get("prompt_id")
    if isinstance(prompt_id, str) and 0 < len(prompt_id) <= 64:
        facts.prompt_id = prompt_id


def _text_chunk(kind: bytes, data: bytes) -> tuple[str, str]:
    key, sep, rest = data.partition(b"\0")
    if not sep:
        return "", ""
    try:
        if kind == b"tEXt":
            return key.decode("latin-1"), rest.decode("latin-1")
        if kind == b"zTXt":
            return key.decode("latin-1"), zlib.decompress(rest[1:]).decode("latin-1")
        # iTXt: compression flag, method, language\0, translated keyword\0, text
        flag, _method = rest[0], rest[1]
        _lang, _, rest = rest[2:].partition(b"\0")
        _translated, _, text = rest.partition(b"\0")
        if flag:
            text = zlib.decompress(text)
        return key.decode("latin-1"), text.decode("utf-8")
    except (zlib.error, UnicodeDecodeError, IndexError):
        return "", ""


def _json_object(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return finite(value) if isinstance(value, dict) else None


def _read_image_size(path: Path, facts: FileFacts) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            facts.width, facts.height = image.size
    except (UnidentifiedImageError, OSError, ValueError):
        pass
