"""The only writer of `generations` and `outputs` rows made from ComfyUI's data.

Every write is idempotent: a prompt is one row per project (unique `prompt_id`), a file
one row per project (unique type/subfolder/filename), and inserts skip rows that exist
(`ON CONFLICT DO NOTHING` on SQLite and PostgreSQL alike). So a sync may run twice, in
two workers at once, or after a crash half-way, and nothing is ever doubled.

A file indexed from its own metadata (source `file`) is taken over by the history entry
that names it, if one turns up later: the history knows the prompt id and the status.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfyhub.models import Generation, Output, utcnow
from comfyhub.outputs.graph import Params, params_of
from comfyhub.outputs.history import FileRef, Finished
from comfyhub.outputs.media import FileFacts, media_type

# The key of a live output row (the partial unique index uq_outputs_file).
OUTPUT_KEY = ["project_id", "type", "subfolder", "filename"]
LIVE = Output.deleted_at.is_(None)

# Rows per statement: big enough to amortise a round trip, small enough to keep each
# transaction (and SQLite's write lock) short.
BATCH = 200


@dataclass
class FoundFile:
    """A file in an output folder that no record names yet."""

    ref: FileRef
    facts: FileFacts


def _insert(session: AsyncSession, model):
    dialect = session.bind.dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(model)


def _when(finished: Finished, facts: FileFacts | None) -> datetime:
    if finished.finished_at is not None:
        return finished.finished_at
    if facts is not None:
        return datetime.fromtimestamp(facts.mtime, UTC)
    return utcnow()


def _output_row(project_id: int, user_id: int, generation_id: int, ref: FileRef, facts, params: Params, at) -> dict:
    return {
        "project_id": project_id,
        "user_id": user_id,
        "generation_id": generation_id,
        "node_id": ref.node_id,
        "filename": ref.filename,
        "subfolder": ref.subfolder,
        "type": ref.type,
        "media_type": media_type(ref.filename),
        "size": facts.size if facts else None,
        "width": facts.width if facts else None,
        "height": facts.height if facts else None,
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "seed": params.seed,
        "steps": params.steps,
        "cfg": params.cfg,
        "sampler": params.sampler[:64],
        "scheduler": params.scheduler[:64],
        "model": params.model[:255],
        "mark": None,
        "tags": "[]",
        "note": "",
        "created_at": at,
        "deleted_at": None,
        "trash_path": "",
    }


class OutputStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self.sessions = sessions

    async def known_prompts(self, project_id: int, prompt_ids: Sequence[str]) -> set[str]:
        """Which of these prompts are on record from the history (a record made from a
        file is not complete: its history entry, if it turns up, completes it)."""
        if not prompt_ids:
            return set()
        async with self.sessions() as session:
            rows = await session.execute(
                select(Generation.prompt_id).where(
                    Generation.project_id == project_id,
                    Generation.prompt_id.in_(list(prompt_ids)),
                    Generation.source == "history",
                )
            )
            return {r[0] for r in rows}

    async def known_files(self, project_id: int, names: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (subfolder, filename) are live outputs of the project (a deleted
        output's file is in the trash: a file found under its name is a new one)."""
        if not names:
            return set()
        async with self.sessions() as session:
            rows = await session.execute(
                select(Output.subfolder, Output.filename).where(
                    Output.project_id == project_id, Output.filename.in_({n for _, n in names}), LIVE
                )
            )
            return {(r[0], r[1]) for r in rows} & set(names)

    async def record_finished(
        self,
        project_id: int,
        user_id: int,
        finished: Sequence[Finished],
        facts: dict[FileRef, FileFacts],
        params: dict[str, Params] | None = None,
    ) -> int:
        """Store finished prompts and their files; returns how many prompts were new.

        `facts` holds what was read from each file on disk (missing: the file is gone);
        `params` the graph parameters per prompt id (computed off the event loop by the
        caller; computed here when absent).
        """
        new = 0
        for start in range(0, len(finished), BATCH):
            new += await self._record_batch(project_id, user_id, finished[start : start + BATCH], facts, params or {})
        return new

    async def _record_batch(self, project_id, user_id, batch: Sequence[Finished], facts, params) -> int:
        async with self.sessions() as session:
            rows = [
                {
                    "project_id": project_id,
                    "user_id": user_id,
                    "prompt_id": f.prompt_id,
                    "number": f.number,
                    "status": f.status,
                    "source": "history",
                    "started_at": f.started_at,
                    "finished_at": f.finished_at,
                    "graph": f.graph,
                    "error": f.error,
                    "created_at": utcnow(),
                }
                for f in batch
            ]
            stmt = _insert(session, Generation).on_conflict_do_nothing(index_elements=["project_id", "prompt_id"])
            inserted = await session.execute(stmt.returning(Generation.id, Generation.prompt_id), rows)
            new_ids = {prompt_id: gid for gid, prompt_id in inserted}
            # A prompt first known from its file (its history was lost, then turned up, or a
            # job item's file): the history entry completes that record.
            upgraded = await self._complete_file_records(
                session, project_id, [f for f in batch if f.prompt_id not in new_ids]
            )
            new_ids.update(upgraded)
            files = [(f, ref) for f in batch if f.prompt_id in new_ids for ref in f.files]
            if files:
                await self._add_files(session, project_id, user_id, files, new_ids, facts, params)
            await session.commit()
            return len(new_ids) - len(upgraded)

    async def _complete_file_records(self, session, project_id: int, finished: Sequence[Finished]) -> dict[str, int]:
        if not finished:
            return {}
        by_prompt = {f.prompt_id: f for f in finished}
        rows = await session.execute(
            select(Generation.id, Generation.prompt_id).where(
                Generation.project_id == project_id,
                Generation.source == "file",
                Generation.prompt_id.in_(list(by_prompt)),
            )
        )
        done = {}
        for gid, prompt_id in rows:
            f = by_prompt[prompt_id]
            await session.execute(
                update(Generation)
                .where(Generation.id == gid)
                .values(
                    source="history",
                    status=f.status,
                    number=f.number,
                    started_at=f.started_at,
                    finished_at=f.finished_at,
                    graph=f.graph,
                    error=f.error,
                )
            )
            done[prompt_id] = gid
        return done

    async def _add_files(self, session, project_id, user_id, files, gen_ids, facts, params) -> None:
        out_rows = []
        for finished, ref in files:
            p = params.get(finished.prompt_id) or params_of(finished.graph)
            f = facts.get(ref)
            out_rows.append(
                _output_row(project_id, user_id, gen_ids[finished.prompt_id], ref, f, p, _when(finished, f))
            )
        stmt = _insert(session, Output).on_conflict_do_nothing(index_elements=OUTPUT_KEY, index_where=LIVE)
        inserted = await session.execute(stmt.returning(Output.subfolder, Output.filename), out_rows)
        taken = {(s, n) for s, n in inserted}
        # Files already on record from their own metadata: the history entry takes them over.
        for row in out_rows:
            if (row["subfolder"], row["filename"]) in taken:
                continue
            await session.execute(
                update(Output)
                .where(
                    Output.project_id == project_id,
                    Output.type == row["type"],
                    Output.subfolder == row["subfolder"],
                    Output.filename == row["filename"],
                    LIVE,
                    Output.generation_id.in_(
                        select(Generation.id).where(Generation.project_id == project_id, Generation.source == "file")
                    ),
                )
                .values(generation_id=row["generation_id"], node_id=row["node_id"], created_at=row["created_at"])
            )
        await self._drop_empty_file_records(session, project_id)

    async def record_files(self, project_id: int, user_id: int, found: Iterable[FoundFile]) -> int:
        """Index files no record names, from their own metadata; returns how many were new."""
        found = list(found)
        new = 0
        for start in range(0, len(found), BATCH):
            batch = found[start : start + BATCH]
            try:
                new += await self._record_files_batch(project_id, user_id, batch)
            except IntegrityError:
                # Another scan recorded one of these prompts meanwhile: once more, it is known now.
                new += await self._record_files_batch(project_id, user_id, batch)
        return new

    async def _record_files_batch(self, project_id, user_id, batch: Sequence[FoundFile]) -> int:
        async with self.sessions() as session:
            # A file that names its prompt (job items do) joins that prompt's record if there
            # is one, or makes one under that prompt id; any other file gets a record of its own.
            named = {f.facts.prompt_id for f in batch if f.facts.prompt_id}
            known = await self._generation_ids(session, project_id, named)
            keys, rows = [], {}
            for i, item in enumerate(batch):
                prompt_id = item.facts.prompt_id
                key = (
                    ("known", known[prompt_id])
                    if prompt_id in known
                    else ("prompt", prompt_id)
                    if prompt_id
                    else ("file", i)
                )
                keys.append(key)
                if key[0] != "known" and key not in rows:
                    rows[key] = self._file_generation(project_id, user_id, item, prompt_id)
            ids = {("known", gid): gid for gid in known.values()}
            if rows:
                result = await session.execute(
                    _insert(session, Generation).returning(Generation.id, sort_by_parameter_order=True),
                    list(rows.values()),
                )
                ids.update(zip(rows, (r[0] for r in result), strict=True))
            out_rows = [
                _output_row(
                    project_id,
                    user_id,
                    ids[key],
                    item.ref,
                    item.facts,
                    params_of(item.facts.graph),
                    datetime.fromtimestamp(item.facts.mtime, UTC),
                )
                for key, item in zip(keys, batch, strict=True)
            ]
            stmt = _insert(session, Output).on_conflict_do_nothing(index_elements=OUTPUT_KEY, index_where=LIVE)
            inserted = len((await session.execute(stmt.returning(Output.id), out_rows)).all())
            if inserted < len(out_rows):
                await self._drop_empty_file_records(session, project_id)  # lost a race: keep no empty record
            await session.commit()
            return inserted

    @staticmethod
    def _file_generation(project_id: int, user_id: int, item: FoundFile, prompt_id: str | None) -> dict:
        return {
            "project_id": project_id,
            "user_id": user_id,
            "prompt_id": prompt_id,
            "number": None,
            "status": "success",  # it wrote a file; the history that would say more is gone
            "source": "file",
            "started_at": None,
            "finished_at": datetime.fromtimestamp(item.facts.mtime, UTC),
            "graph": item.facts.graph,
            "error": "",
            "created_at": utcnow(),
        }

    async def _generation_ids(self, session, project_id: int, prompt_ids) -> dict[str, int]:
        if not prompt_ids:
            return {}
        rows = await session.execute(
            select(Generation.prompt_id, Generation.id).where(
                Generation.project_id == project_id, Generation.prompt_id.in_(list(prompt_ids))
            )
        )
        return dict(rows.all())

    async def _drop_empty_file_records(self, session, project_id: int) -> None:
        # Our own bookkeeping rows, never user data: a `file` record whose file went to a history record.
        await session.execute(
            delete(Generation).where(
                Generation.project_id == project_id,
                Generation.source == "file",
                ~exists().where(Output.generation_id == Generation.id),
            )
        )


def tags_text(tags: Iterable[str]) -> str:
    return json.dumps(sorted(set(tags)), ensure_ascii=False)
