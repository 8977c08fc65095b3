"""Thumbnails for the gallery: made once with Pillow, then served from a disk cache.

The cache key carries the file's size and modification time, so a file replaced under
the same name gets a new thumbnail. Writes go to a temporary name and are renamed into
place, so two requests racing for the same thumbnail both get a whole file.
"""

from __future__ import annotations

import os
from pathlib import Path

THUMB_SIZE = 320
_QUALITY = 80


def thumb_path(cache_dir: Path, project_id: int, output_id: int, source: Path) -> Path:
    st = source.stat()
    return cache_dir / f"p{project_id}" / f"{output_id}-{st.st_size}-{st.st_mtime_ns}.webp"


def ensure_thumb(cache_dir: Path, project_id: int, output_id: int, source: Path) -> Path:
    """The thumbnail of an image file, made now if the cache lacks it (blocking)."""
    target = thumb_path(cache_dir, project_id, output_id, source)
    if target.is_file():
        return target
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _make(source, target)
    except Image.DecompressionBombError as exc:
        raise ValueError("image too large for a thumbnail") from exc


def _make(source: Path, target: Path) -> Path:
    from PIL import Image, ImageOps

    with Image.open(source) as image:
        image.draft("RGB", (THUMB_SIZE, THUMB_SIZE))  # JPEG: decode at a reduced scale
        image = ImageOps.exif_transpose(image)
        image.thumbnail((THUMB_SIZE, THUMB_SIZE), reducing_gap=2.0)
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if "A" in image.getbands() or image.mode == "P" else "RGB")
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        image.save(tmp, "WEBP", quality=_QUALITY, method=0)
    os.replace(tmp, target)
    return target
