"""Output files found on disk that no record names yet (written just before a crash, or
before comfyhub kept records): recorded from their own metadata."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path

from comfyhub.config import Settings
from comfyhub.outputs import files
from comfyhub.outputs.history import FileRef, safe_name, safe_subfolder
from comfyhub.outputs.media import file_facts, is_output_file
from comfyhub.outputs.store import FoundFile, OutputStore

log = logging.getLogger("comfyhub.outputs")

SCAN_BATCH = 500  # files checked against the records per query


async def scan_files(settings: Settings, store: OutputStore, project_id: int, user_id: int) -> int:
    """Record output files no record names yet, from their own metadata; returns how many.

    The folder is listed in a thread; names are checked against the records a batch
    at a time, so a project with 100,000 files never loads them all at once.
    """
    candidates = await asyncio.to_thread(list_files, settings, user_id, project_id)
    stored = 0
    for start in range(0, len(candidates), SCAN_BATCH):
        batch = candidates[start : start + SCAN_BATCH]
        known = await store.known_files(project_id, [(sub, name) for sub, name, _ in batch])
        fresh = [c for c in batch if (c[0], c[1]) not in known]
        if fresh:
            found = await asyncio.to_thread(_read_found, fresh)
            stored += await store.record_files(project_id, user_id, found)
    if stored:
        log.info("project %s: recorded %d output file(s) from their metadata", project_id, stored)
    return stored


def list_files(settings: Settings, user_id: int, project_id: int) -> list[tuple[str, str, Path]]:
    """(subfolder, filename, path) of every plain output file, oldest first (blocking)."""
    folder = files.output_dir(settings, user_id, project_id)
    listed = []
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(root, d)))
        subfolder = Path(root).relative_to(folder).as_posix()
        subfolder = "" if subfolder == "." else subfolder
        if not safe_subfolder(subfolder):
            continue
        for name in names:
            if not safe_name(name) or not is_output_file(name):
                continue
            path = Path(root) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):  # never a link: it may point anywhere
                listed.append((st.st_mtime, subfolder, name, path))
    listed.sort()
    return [(sub, name, path) for _, sub, name, path in listed]


def _read_found(candidates: list[tuple[str, str, Path]]) -> list[FoundFile]:
    found = []
    for subfolder, name, path in candidates:
        try:
            facts = file_facts(path)
        except OSError:
            continue  # gone meanwhile
        found.append(FoundFile(FileRef(node_id="", filename=name, subfolder=subfolder), facts))
    return found
