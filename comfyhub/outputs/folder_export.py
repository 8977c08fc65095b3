"""`comfyhub outputs export PROJECT_ID --out DIR`: the dataset export, written into a folder.

The same Hugging Face `imagefolder` as the ZIP the API streams (export.py: the same
files, names and metadata.jsonl, from the same functions), made on the server from the
database and the files on disk, for exports too large to download. Files are copied, or
hard-linked with `--link` where the folder is on the same filesystem (no copy, no space;
a file that cannot be linked is copied). metadata.jsonl is written last, under a
temporary name, so a folder without it is an export that did not finish.

No user or permission is involved: whoever can run the command can read the database
and the files anyway. A deleted project's outputs are exported too (they are kept).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfyhub.config import Settings
from comfyhub.db import create_engine, session_factory
from comfyhub.models import Project
from comfyhub.outputs import export, files
from comfyhub.outputs.filters import MARKS, MEDIA_TYPES, STATUSES, OutputFilter, parse_when

USAGE_ERROR = 2  # as argparse: the command cannot run as given
NOTHING = 1  # it ran, and nothing matched


class Refused(Exception):
    """A one-line reason the export cannot run, and its exit code."""

    def __init__(self, message: str, code: int = USAGE_ERROR):
        super().__init__(message)
        self.code = code


@dataclass
class Written:
    files: int
    bytes: int
    linked: int
    project_code: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project_id", type=int, help="the project's id (as in `services list` or the web page)")
    parser.add_argument("--out", required=True, type=Path, help="the folder to write (created; must be empty)")
    parser.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    parser.add_argument("--link", action="store_true", help="hard-link the files instead of copying where possible")
    parser.add_argument("--mark", choices=(*MARKS, "none"), help="only outputs marked so (none: not marked)")
    parser.add_argument("--tag", action="append", default=[], help="only outputs with this tag (repeatable: all)")
    parser.add_argument("--status", choices=STATUSES, help="only outputs of generations that ended so")
    parser.add_argument("--since", type=_since, help="created on or after (2026-12-01 or an ISO time; UTC)")
    parser.add_argument("--until", type=_until, help="created up to (a date: that whole day included)")
    parser.add_argument("--text", help="in the prompt, the negative prompt or the file name")
    parser.add_argument("--media-type", choices=MEDIA_TYPES, help="the kind of file (default: image)")


def _since(value: str):
    try:
        return parse_when(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date or ISO time: {value!r}") from None


def _until(value: str):
    try:
        return parse_when(value, end=True)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date or ISO time: {value!r}") from None


def filter_of(args: argparse.Namespace) -> OutputFilter:
    return OutputFilter(
        since=args.since,
        until=args.until,
        status=args.status,
        mark=args.mark,
        tags=list(args.tag),
        text=args.text or None,
        media_type=args.media_type,
    )


def main(settings: Settings, args: argparse.Namespace) -> int:
    """The command: export, print one line, return the exit code."""
    try:
        done = asyncio.run(run(settings, args.project_id, args.out, filter_of(args), link=args.link, force=args.force))
    except Refused as exc:
        print(f"comfyhub: {exc}", file=sys.stderr)
        return exc.code
    linked = f", {done.linked} hard-linked" if args.link else ""
    print(
        f"exported {done.files} file(s), {_mib(done.bytes)}{linked}, of project {args.project_id} "
        f"({done.project_code}) to {args.out}"
    )
    return 0


async def run(
    settings: Settings, project_id: int, out: Path, flt: OutputFilter, *, link: bool = False, force: bool = False
) -> Written:
    _check_out(settings, out, force)
    engine = create_engine(settings.database_url)
    try:
        sessions = session_factory(engine)
        project = await _project(sessions, project_id)
        chosen = await export.members(settings, sessions, project_id, flt)
        if not chosen:
            raise Refused(f"nothing to export: no file of project {project_id} matches", NOTHING)
        out.mkdir(parents=True, exist_ok=True)
        (out / export.METADATA_NAME).unlink(missing_ok=True)  # --force over an earlier export
        placed, linked = _place_all(out, chosen, link)
        await _write_metadata(sessions, out, placed, await export.param_columns(sessions, project_id, placed))
        return Written(len(placed), sum(m.size for m in placed), linked, project.deleted_code or project.code)
    finally:
        await engine.dispose()


def _check_out(settings: Settings, out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise Refused(f"--out {out} is not a folder")
    base = settings.comfyui_instance_base_dir
    if files.inside(out, base) or files.inside(base, out):
        raise Refused(f"--out {out} overlaps the instances folder {base}: choose a folder outside it")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise Refused(f"--out {out} is not empty (--force writes into it, replacing files of the same name)")


async def _project(sessions: async_sessionmaker[AsyncSession], project_id: int) -> Project:
    async with sessions() as session:
        project = await session.get(Project, project_id)
    if project is None:
        raise Refused(f"project {project_id} not found")
    return project


def _place_all(out: Path, chosen: list[export.Member], link: bool) -> tuple[list[export.Member], int]:
    """Copy (or link) every member under `out`, with a progress bar; returns those placed."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    placed, linked = [], 0
    total = len(chosen)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, TimeRemainingColumn(), console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(f"0/{total} files", total=sum(m.size for m in chosen) or None)
        for member in chosen:
            try:
                linked += _place(out, member, link)
            except OSError as exc:
                # The file went away (or became unreadable) since it was checked: leave it out.
                progress.console.print(f"skipped {member.name}: {exc.strerror or exc}")
            else:
                placed.append(member)
            progress.update(task, advance=member.size, description=f"{len(placed)}/{total} files")
    return placed, linked


def _place(out: Path, member: export.Member, link: bool) -> bool:
    """Put one file at its name under `out`; True when it was hard-linked."""
    target = out / member.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not files.inside(target.parent, out):  # a link in a --force'd folder leading elsewhere
        raise OSError(0, "its folder leads outside --out")
    if target.is_symlink() or target.exists():
        target.unlink()
    if link:
        try:
            os.link(member.path, target)
            return True
        except OSError:
            pass  # another filesystem, or links not allowed there: copy instead
    shutil.copyfile(member.path, target)
    return False


async def _write_metadata(sessions, out: Path, placed: list[export.Member], params: list[str]) -> None:
    partial = out / f".{export.METADATA_NAME}.partial"
    with open(partial, "w", encoding="utf-8") as f:
        async for line in export.metadata_lines(sessions, placed, params):
            f.write(line)
    os.replace(partial, out / export.METADATA_NAME)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"
