"""The dataset export: a project's outputs as a Hugging Face `imagefolder`, streamed.

The archive holds each file at its path under output/ (`sub/name.png`) and, last,
`metadata.jsonl` with one line per file: `file_name` plus one column per recorded field.
`datasets.load_dataset("imagefolder", data_dir=...)` loads the unzipped folder as is.

Nothing is copied or buffered whole: the ZIP is produced member by member by stream-zip
(deflate at level 0, which stores the bytes — images are compressed already — and needs
no size up front), each file read in 1 MiB pieces. Memory stays flat whatever the
number or size of the files: only the list of output ids (a few bytes each) is kept.
The same rows feed `comfyhub outputs export`, which writes the folder instead of a ZIP.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfyhub.config import Settings
from comfyhub.models import Generation, Output
from comfyhub.outputs import files, query
from comfyhub.outputs.filters import OutputFilter

READ_CHUNK = 1 << 20
METADATA_BATCH = 200
METADATA_NAME = "metadata.jsonl"
# The export is a dataset of images unless the filter asks for another kind.
DEFAULT_MEDIA = "image"

# The columns of metadata.jsonl, after `file_name`, in this order.
COLUMNS = (
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "cfg",
    "sampler",
    "scheduler",
    "model",
    "width",
    "height",
    "mark",
    "tags",
    "note",
    "record_id",
    "generation_id",
    "prompt_id",
    "status",
    "created_at",
    "graph",
)


@dataclass(frozen=True)
class Member:
    """One file of the export: its id, where it is, and its name in the archive."""

    output_id: int
    path: Path
    name: str
    mtime: datetime


def export_filter(flt: OutputFilter) -> OutputFilter:
    if flt.media_type is None:
        flt.media_type = DEFAULT_MEDIA
    return flt


async def members(settings: Settings, sessions: async_sessionmaker[AsyncSession], project_id: int, flt: OutputFilter):
    """The files the filter selects (oldest first), checked on disk; missing or unsafe ones are left out."""
    async with sessions() as session:
        stmt = query.matching(project_id, export_filter(flt)).with_only_columns(
            Output.id, Output.user_id, Output.subfolder, Output.filename
        )
        rows = (await session.execute(stmt.order_by(Output.created_at, Output.id))).all()
    return await asyncio.to_thread(_checked, settings, project_id, rows)


def _checked(settings: Settings, project_id: int, rows) -> list[Member]:
    out = []
    for output_id, user_id, subfolder, filename in rows:
        try:
            path = files.resolve(settings, user_id, project_id, subfolder, filename)
            mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except (files.FileRefused, OSError):
            continue
        out.append(Member(output_id, path, f"{subfolder}/{filename}" if subfolder else filename, mtime))
    return out


def metadata_line(name: str, output: Output, generation: Generation) -> str:
    row = {
        "file_name": name,
        "prompt": output.prompt,
        "negative_prompt": output.negative_prompt,
        "seed": output.seed,
        "steps": output.steps,
        "cfg": output.cfg,
        "sampler": output.sampler,
        "scheduler": output.scheduler,
        "model": output.model,
        "width": output.width,
        "height": output.height,
        "mark": output.mark or "",
        "tags": json.loads(output.tags or "[]"),
        "note": output.note,
        "record_id": output.id,
        "generation_id": generation.id,
        "prompt_id": generation.prompt_id or "",
        "status": generation.status,
        "created_at": output.created_at.isoformat(),
        # A string, not nested JSON: graphs differ in shape, and a column needs one type.
        "graph": json.dumps(generation.graph, ensure_ascii=False) if generation.graph is not None else "",
    }
    return json.dumps(row, ensure_ascii=False) + "\n"


async def metadata_lines(sessions: async_sessionmaker[AsyncSession], chosen: list[Member]) -> AsyncIterator[str]:
    """metadata.jsonl for these members, read from the database a batch at a time."""
    for start in range(0, len(chosen), METADATA_BATCH):
        batch = chosen[start : start + METADATA_BATCH]
        names = {m.output_id: m.name for m in batch}
        async with sessions() as session:
            rows = (
                await session.execute(
                    select(Output, Generation)
                    .join(Generation, Generation.id == Output.generation_id)
                    .where(Output.id.in_(list(names)))
                )
            ).all()
        by_id = {o.id: (o, g) for o, g in rows}
        for member in batch:
            if member.output_id in by_id:
                yield metadata_line(member.name, *by_id[member.output_id])


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            yield chunk


def _stored():
    # Level 0: deflate's stored blocks, written as they come (no size or CRC needed first).
    return zlib.compressobj(level=0, wbits=-zlib.MAX_WBITS)


def zip_chunks(sessions, chosen: list[Member], loop: asyncio.AbstractEventLoop) -> Iterator[bytes]:
    """The ZIP, as a blocking iterator: run it in a thread (Starlette does, for a response).

    The metadata is fetched from the database on the event loop, a batch at a time.
    """
    from stream_zip import ZIP_64, stream_zip

    def members_iter():
        for m in chosen:
            yield m.name, m.mtime, 0o644, ZIP_64, file_chunks(m.path)
        yield METADATA_NAME, datetime.now(UTC), 0o644, ZIP_64, _metadata_bytes(sessions, chosen, loop)

    return stream_zip(members_iter(), chunk_size=READ_CHUNK, get_compressobj=_stored)


def _metadata_bytes(sessions, chosen: list[Member], loop: asyncio.AbstractEventLoop) -> Iterator[bytes]:
    lines = metadata_lines(sessions, chosen).__aiter__()
    while True:
        future = asyncio.run_coroutine_threadsafe(_next_batch(lines), loop)
        batch = future.result()
        if not batch:
            return
        yield batch.encode()


async def _next_batch(lines, size: int = 256 << 10) -> str:
    parts, total = [], 0
    async for line in lines:
        parts.append(line)
        total += len(line)
        if total >= size:
            break
    return "".join(parts)


def archive_name(project_code: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in project_code) or "project"
    return f"{safe}-outputs-{stamp}.zip"
