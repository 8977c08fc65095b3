"""The dataset export: a project's outputs as a Hugging Face `imagefolder`, streamed.

The archive holds each file at its path under output/ (`sub/name.png`) and, last,
`metadata.jsonl` with one line per file: `file_name` plus one column per recorded field.
`datasets.load_dataset("imagefolder", data_dir=...)` loads the unzipped folder as is.

Nothing is copied or buffered whole: the ZIP is produced member by member by stream-zip
(deflate at level 0, which stores the bytes — images are compressed already — and needs
no size up front), each file read in 1 MiB pieces. Memory stays flat whatever the
number or size of the files: only a small record per file (id, path, name) is kept.
The same rows feed `comfyhub outputs export` (folder_export.py), which writes the folder
instead of a ZIP.

Every column keeps one type whatever the rows hold, because `datasets` takes the types
from the first 10 MB of metadata.jsonl and then casts every later line to them: a column
typed `null` there (every seed unknown, every tag list empty) makes the first later line
with a value fail the whole load. So the metadata lines start with one line for each
column that can be empty where it has a value (when any has), and `created_at` is always
written to the microsecond (pyarrow reads whole-second ISO times as timestamps and the
others as strings). A column with no value at all in the whole export is typed `null`,
which loads.
"""

from __future__ import annotations

import asyncio
import json
import os
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Text, and_, cast, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfyhub.config import Settings
from comfyhub.models import Generation, Job, JobItem, Output
from comfyhub.outputs import files, query
from comfyhub.outputs.filters import OutputFilter

READ_CHUNK = 1 << 20
SEND_CHUNK = 1 << 20
METADATA_BATCH = 200
METADATA_NAME = "metadata.jsonl"
# The export is a dataset of images unless the filter asks for another kind.
DEFAULT_MEDIA = "image"

# The columns of metadata.jsonl, after `file_name`, in this order.
COLUMNS = (
    *query.PARAMETERS,
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


# Columns that may hold null (or an empty list) in a line: `datasets` learns their type
# from the first lines it reads, so a line where each has a value goes first. `params`
# stands for the job parameter columns (`6.text`, `3.seed`, …), set on job outputs only.
SPARSE = ("seed", "steps", "cfg", "width", "height", "tags", "params")


@dataclass(frozen=True, slots=True)
class Member:
    """One file of the export: its id, where it is, its name in the archive, and which
    of the SPARSE columns it has a value for."""

    output_id: int
    path: Path
    name: str
    mtime: datetime
    size: int
    filled: frozenset[str] = frozenset()


def export_filter(flt: OutputFilter) -> OutputFilter:
    if flt.media_type is None:
        flt.media_type = DEFAULT_MEDIA
    return flt


async def members(settings: Settings, sessions: async_sessionmaker[AsyncSession], project_id: int, flt: OutputFilter):
    """The files the filter selects (oldest first), checked on disk; missing or unsafe ones are left out."""
    async with sessions() as session:
        stmt = (
            query.matching(project_id, export_filter(flt))
            .outerjoin(JobItem, _item_of(project_id))
            .with_only_columns(Output.id, Output.user_id, Output.subfolder, Output.filename, *_filled_columns())
        )
        rows = (await session.execute(stmt.order_by(Output.created_at, Output.id))).all()
    return await asyncio.to_thread(_checked, settings, project_id, rows)


def _item_of(project_id):
    """Join condition: the job item (of this project's jobs) that a generation ran."""
    return and_(
        JobItem.prompt_id == Generation.prompt_id,
        JobItem.job_id.in_(select(Job.id).where(Job.project_id == project_id)),
    )


async def param_columns(sessions: async_sessionmaker[AsyncSession], project_id: int, chosen: list[Member]) -> list[str]:
    """The job parameter columns of the project's jobs, in the order the jobs named them;
    none when no chosen file came from a job."""
    if not any("params" in m.filled for m in chosen):
        return []
    async with sessions() as session:
        rows = await session.execute(select(Job.columns).where(Job.project_id == project_id).order_by(Job.id))
        names: dict[str, None] = {}
        for (columns,) in rows:
            names.update(dict.fromkeys(c for c in columns or [] if isinstance(c, str)))
    return list(names)


def _filled_columns():
    return (
        Output.seed.is_not(None),
        Output.steps.is_not(None),
        Output.cfg.is_not(None),
        Output.width.is_not(None),
        Output.height.is_not(None),
        Output.tags != "[]",
        JobItem.id.is_not(None),
    )


def _checked(settings: Settings, project_id: int, rows) -> list[Member]:
    out = []
    resolvers: dict[int, files.FolderResolver] = {}
    sets: dict[tuple, frozenset[str]] = {}  # a handful of distinct sets, shared by every member
    for output_id, user_id, subfolder, filename, *filled in rows:
        if user_id not in resolvers:
            resolvers[user_id] = files.FolderResolver(settings, user_id, project_id)
        try:
            path, st = resolvers[user_id](subfolder, filename)
        except files.FileRefused:
            continue
        name = f"{subfolder}/{filename}" if subfolder else filename
        mtime = datetime.fromtimestamp(st.st_mtime, UTC)
        key = tuple(bool(yes) for yes in filled)
        if key not in sets:
            sets[key] = frozenset(column for column, yes in zip(SPARSE, key, strict=True) if yes)
        out.append(Member(output_id, path, name, mtime, st.st_size, sets[key]))
    return out


def metadata_order(chosen: list[Member]) -> list[Member]:
    """The members in the order of their metadata lines: for each SPARSE column, the first
    member with a value for it leads; then the rest, oldest first."""
    lead: dict[int, Member] = {}
    for column in SPARSE:
        first = next((m for m in chosen if column in m.filled), None)
        if first is not None:
            lead.setdefault(first.output_id, first)
    return [*lead.values(), *(m for m in chosen if m.output_id not in lead)]


def metadata_line(
    name: str,
    output: Output,
    generation_id: int,
    prompt_id,
    status: str,
    graph: str | None,
    params: dict | None = None,
    param_names: list[str] = (),
) -> str:
    """One line of metadata.jsonl; `graph` is the generation's graph as the database keeps
    it (JSON text: passed on as is, not decoded and encoded again for every file).
    A job's output carries its item's parameters, one column each (`6.text`); every line
    has every parameter column, null where the file did not come from a job."""
    row = {
        "file_name": name,
        **query.parameters(output),
        "mark": output.mark or "",
        "tags": json.loads(output.tags or "[]"),
        "note": output.note,
        "record_id": output.id,
        "generation_id": generation_id,
        "prompt_id": prompt_id or "",
        "status": status,
        "created_at": output.created_at.isoformat(timespec="microseconds"),
        # A string, not nested JSON: graphs differ in shape, and a column needs one type.
        "graph": graph if graph and graph != "null" else "",
    }
    for column in param_names:
        row[column] = (params or {}).get(column)
    return json.dumps(row, ensure_ascii=False) + "\n"


async def metadata_lines(
    sessions: async_sessionmaker[AsyncSession], chosen: list[Member], param_names: list[str] = ()
) -> AsyncIterator[str]:
    """metadata.jsonl for these members, read from the database a batch at a time."""
    chosen = metadata_order(chosen)
    for start in range(0, len(chosen), METADATA_BATCH):
        batch = chosen[start : start + METADATA_BATCH]
        names = {m.output_id: m.name for m in batch}
        async with sessions() as session:
            rows = (
                await session.execute(
                    select(
                        Output,
                        Generation.id,
                        Generation.prompt_id,
                        Generation.status,
                        cast(Generation.graph, Text),
                        JobItem.params,
                    )
                    .join(Generation, Generation.id == Output.generation_id)
                    .outerjoin(JobItem, _item_of(Generation.project_id))
                    .where(Output.id.in_(list(names)))
                )
            ).all()
        by_id = {row[0].id: row for row in rows}
        for member in batch:
            if member.output_id in by_id:
                yield metadata_line(member.name, *by_id[member.output_id], param_names)


def file_chunks(path: Path) -> Iterator[bytes]:
    # The path was checked when the export began; a file swapped for a link since is not followed.
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
        while chunk := f.read(READ_CHUNK):
            yield chunk


def _stored():
    # Level 0: deflate's stored blocks, written as they come (no size or CRC needed first).
    return zlib.compressobj(level=0, wbits=-zlib.MAX_WBITS)


def zip_chunks(
    sessions, chosen: list[Member], loop: asyncio.AbstractEventLoop, param_names: list[str] = ()
) -> Iterator[bytes]:
    """The ZIP, as a blocking iterator: run it in a thread (Starlette does, for a response).

    The metadata is fetched from the database on the event loop, a batch at a time.
    """
    from stream_zip import ZIP_64, stream_zip

    def members_iter():
        for m in chosen:
            yield m.name, m.mtime, 0o644, ZIP_64, file_chunks(m.path)
        yield METADATA_NAME, datetime.now(UTC), 0o644, ZIP_64, _metadata_bytes(sessions, chosen, loop, param_names)

    return _coalesced(stream_zip(members_iter(), chunk_size=READ_CHUNK, get_compressobj=_stored))


def _coalesced(chunks: Iterator[bytes], size: int = SEND_CHUNK) -> Iterator[bytes]:
    """The same bytes in pieces of at least `size`: stream-zip ends a piece at every member,
    and each piece costs the response a hop to a worker thread and a send."""
    parts, total = [], 0
    for chunk in chunks:
        parts.append(chunk)
        total += len(chunk)
        if total >= size:
            yield b"".join(parts)
            parts, total = [], 0
    if parts:
        yield b"".join(parts)


def _metadata_bytes(sessions, chosen: list[Member], loop: asyncio.AbstractEventLoop, param_names) -> Iterator[bytes]:
    lines = metadata_lines(sessions, chosen, param_names).__aiter__()
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
