"""The gallery's questions: which outputs match a filter, a page of them, newest first.

The filter is the same for the gallery, the selection actions and the export, so a user
who sees N items in the gallery exports exactly those N.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Select, func, or_, select
from sqlalchemy.sql.util import find_tables

from comfyhub.models import Generation, Output
from comfyhub.outputs.filters import OutputFilter


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def matching(project_id: int, flt: OutputFilter) -> Select:
    """SELECT Output, Generation.status, Generation.prompt_id for the filter (no order, no page)."""
    query = (
        select(Output, Generation.status, Generation.prompt_id)
        .join(Generation, Generation.id == Output.generation_id)
        .where(Output.project_id == project_id)
    )
    query = query.where(Output.deleted_at.is_not(None) if flt.deleted else Output.deleted_at.is_(None))
    if flt.since is not None:
        query = query.where(Output.created_at >= flt.since)
    if flt.until is not None:
        query = query.where(Output.created_at < flt.until)
    if flt.status:
        query = query.where(Generation.status == flt.status)
    if flt.mark == "none":
        query = query.where(Output.mark.is_(None))
    elif flt.mark:
        query = query.where(Output.mark == flt.mark)
    for tag in flt.tags:
        # Tags are a JSON list kept as text: a tag matches as its quoted JSON string.
        query = query.where(Output.tags.like(f"%{_escape_like(json.dumps(tag, ensure_ascii=False))}%", escape="\\"))
    if flt.text:
        pattern = f"%{_escape_like(flt.text)}%"
        query = query.where(
            or_(
                Output.prompt.ilike(pattern, escape="\\"),
                Output.negative_prompt.ilike(pattern, escape="\\"),
                Output.filename.ilike(pattern, escape="\\"),
            )
        )
    if flt.media_type:
        query = query.where(Output.media_type == flt.media_type)
    if flt.ids is not None:
        query = query.where(Output.id.in_(flt.ids))
    return query


def newest_first(query: Select) -> Select:
    return query.order_by(Output.created_at.desc(), Output.id.desc())


def count(query: Select) -> Select:
    """SELECT count(*) of a `matching` query.

    The join is left out unless the filter reads the generation (its status): every output
    has exactly one generation (a non-null foreign key), so the join changes only the cost,
    which at 100,000 outputs is a lookup per output (neither SQLite nor PostgreSQL drops
    an inner join on its own)."""
    where = query.whereclause
    if where is not None and Generation.__table__ not in find_tables(where, check_columns=True):
        return select(func.count()).select_from(Output).where(where)
    return select(func.count()).select_from(query.with_only_columns(Output.id).order_by(None).subquery())


# What each output records of the generation that made it (read from its graph and file):
# the gallery shows these, and the export makes a column of each.
PARAMETERS = ("prompt", "negative_prompt", "seed", "steps", "cfg", "sampler", "scheduler", "model", "width", "height")


def parameters(output: Output) -> dict:
    return {name: getattr(output, name) for name in PARAMETERS}


def item_view(output: Output, status: str, prompt_id: str | None) -> dict:
    """One output as the API shows it."""
    return {
        "id": output.id,
        "filename": output.filename,
        "subfolder": output.subfolder,
        "type": output.type,
        "media_type": output.media_type,
        "node_id": output.node_id,
        "prompt_id": prompt_id,
        "generation_id": output.generation_id,
        "status": status,
        "created_at": _iso(output.created_at),
        "mark": output.mark,
        "tags": json.loads(output.tags or "[]"),
        "note": output.note,
        "size": output.size,
        **parameters(output),
        "deleted_at": _iso(output.deleted_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
