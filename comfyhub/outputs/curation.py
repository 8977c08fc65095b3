"""What a user does to their outputs: mark, tag, note, delete to the trash, restore."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from comfyhub.config import Settings
from comfyhub.models import Output, utcnow
from comfyhub.outputs import files

UNSET = object()


def _tags(output: Output) -> list[str]:
    try:
        value = json.loads(output.tags or "[]")
    except ValueError:
        return []
    return [t for t in value if isinstance(t, str)] if isinstance(value, list) else []


async def annotate(
    session: AsyncSession,
    project_id: int,
    ids: Sequence[int],
    *,
    mark=UNSET,
    tags: Sequence[str] | None = None,
    add_tags: Sequence[str] = (),
    remove_tags: Sequence[str] = (),
    note: str | None = None,
) -> list[Output]:
    """Apply the changes to these outputs of the project (not deleted ones); returns them."""
    rows = (
        (
            await session.execute(
                select(Output).where(
                    Output.project_id == project_id, Output.id.in_(list(ids)), Output.deleted_at.is_(None)
                )
            )
        )
        .scalars()
        .all()
    )
    for output in rows:
        if mark is not UNSET:
            output.mark = mark
        if tags is not None or add_tags or remove_tags:
            current = set(tags) if tags is not None else set(_tags(output))
            current |= set(add_tags)
            current -= set(remove_tags)
            output.tags = json.dumps(sorted(current), ensure_ascii=False)
        if note is not None:
            output.note = note
    await session.commit()
    return list(rows)


async def trash(session: AsyncSession, settings: Settings, outputs: Sequence[Output]) -> int:
    """Move these outputs' files to the trash and mark them deleted; returns how many.

    Each output is committed on its own: a file that cannot be moved (permissions) is
    skipped, and those moved before it are never left live without their trash path."""
    done = 0
    for output in outputs:
        if output.deleted_at is not None:
            continue
        try:
            source = await asyncio.to_thread(
                files.resolve, settings, output.user_id, output.project_id, output.subfolder, output.filename
            )
            output.trash_path = await asyncio.to_thread(
                files.move_to_trash, settings, output.user_id, output.project_id, output.id, source
            )
        except files.FileRefused as exc:
            if not exc.missing:
                continue  # a path leading outside its folder is never moved, only reported
            output.trash_path = ""  # already gone from disk: only the record goes
        except OSError:
            continue  # cannot be moved (permissions, a full disk): left as it is
        output.deleted_at = utcnow()
        await session.commit()
        done += 1
    return done


async def restore(session: AsyncSession, settings: Settings, output: Output) -> None:
    """Bring a deleted output back. Raises FileExistsError when its place is taken."""
    if output.deleted_at is None:
        return
    taken = await session.execute(
        select(Output.id).where(
            Output.project_id == output.project_id,
            Output.type == output.type,
            Output.subfolder == output.subfolder,
            Output.filename == output.filename,
            Output.deleted_at.is_(None),
        )
    )
    if taken.first() is not None:
        raise FileExistsError(output.filename)  # a newer output holds the name now
    if output.trash_path:
        await asyncio.to_thread(
            files.restore_from_trash,
            settings,
            output.user_id,
            output.project_id,
            output.trash_path,
            output.subfolder,
            output.filename,
        )
    await session.execute(update(Output).where(Output.id == output.id).values(deleted_at=None, trash_path=""))
    await session.commit()
