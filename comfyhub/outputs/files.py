"""Where an output's file is, checked every time, and the trash it goes to when deleted.

A stored path is never trusted: `subfolder`/`filename` came from the instance (which
runs the user's custom nodes) or from a folder scan, and the folder may have changed
since. `resolve` follows every symlink and refuses anything that lands outside the
instance's output/ folder. Deleting moves the file into `.trash/` inside the instance
folder (ComfyUI never looks there); `purge_trash` removes trash older than
COMFYHUB_TRASH_DAYS, and nothing else is ever removed.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

from comfyhub.config import Settings
from comfyhub.outputs.history import safe_name, safe_subfolder

TRASH = ".trash"


class FileRefused(Exception):
    """The file is missing, or its path leads outside its folder."""

    def __init__(self, missing: bool):
        super().__init__("missing" if missing else "outside")
        self.missing = missing


def output_dir(settings: Settings, user_id: int, project_id: int) -> Path:
    return settings.instance_dir(user_id, project_id) / "output"


def trash_dir(settings: Settings, user_id: int, project_id: int) -> Path:
    return settings.instance_dir(user_id, project_id) / TRASH


def inside(path: Path, folder: Path) -> bool:
    """Whether `path`, with every symlink followed, is inside `folder` (also resolved)."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))
    except (OSError, ValueError):
        return False


def resolve(settings: Settings, user_id: int, project_id: int, subfolder: str, filename: str) -> Path:
    """The real path of an output file (blocking). Raises FileRefused."""
    if not safe_name(filename) or not safe_subfolder(subfolder):
        raise FileRefused(missing=False)
    folder = output_dir(settings, user_id, project_id)
    path = folder / subfolder / filename
    if not inside(path, folder):
        raise FileRefused(missing=False)
    real = Path(os.path.realpath(path))
    if not real.is_file():
        raise FileRefused(missing=True)
    return real


class FolderResolver:
    """`resolve` for many files of one output folder (an export of thousands), same rules.

    `resolve` follows every component of every path (a dozen lstat calls per file). Here
    each subfolder's real path is looked up once, and a file that is not itself a link
    costs one lstat, whose result (size, mtime) the caller gets too.
    """

    def __init__(self, settings: Settings, user_id: int, project_id: int):
        self.folder = output_dir(settings, user_id, project_id)
        self.real_folder = Path(os.path.realpath(self.folder))
        self._dirs: dict[str, Path] = {}

    def __call__(self, subfolder: str, filename: str) -> tuple[Path, os.stat_result]:
        """The real path of an output file and its stat (blocking). Raises FileRefused."""
        if not safe_name(filename) or not safe_subfolder(subfolder):
            raise FileRefused(missing=False)
        real_dir = self._dirs.get(subfolder)
        if real_dir is None:
            real_dir = self._dirs[subfolder] = Path(os.path.realpath(self.folder / subfolder))
        path = real_dir / filename
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                path = Path(os.path.realpath(path))
                st = os.stat(path)
        except OSError:
            raise FileRefused(missing=True) from None
        if not path.is_relative_to(self.real_folder):
            raise FileRefused(missing=False)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(missing=True)
        return path, st


def resolve_trashed(settings: Settings, user_id: int, project_id: int, trash_path: str) -> Path:
    folder = trash_dir(settings, user_id, project_id)
    path = folder / trash_path
    if not trash_path or not inside(path, folder):
        raise FileRefused(missing=False)
    if not path.is_file():
        raise FileRefused(missing=True)
    return Path(os.path.realpath(path))


def move_to_trash(settings: Settings, user_id: int, project_id: int, output_id: int, source: Path) -> str:
    """Move a resolved output file into the trash; returns its path relative to the trash."""
    day = datetime.now(UTC).strftime("%Y%m%d")
    relative = f"{day}/{output_id}-{source.name}"
    target = trash_dir(settings, user_id, project_id) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, target)
    return relative


def restore_from_trash(
    settings: Settings, user_id: int, project_id: int, trash_path: str, subfolder: str, filename: str
) -> None:
    """Move a trashed file back where ComfyUI wrote it. Raises FileExistsError if taken."""
    source = resolve_trashed(settings, user_id, project_id, trash_path)
    folder = output_dir(settings, user_id, project_id)
    target = folder / subfolder / filename
    if not inside(target.parent, folder):
        raise FileRefused(missing=False)
    if target.exists() or target.is_symlink():
        raise FileExistsError(str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, target)


def purge_trash(instance_base: Path, days: float) -> int:
    """Remove trashed files older than `days` under every instance folder; returns the count.

    Only files inside a `.trash/` folder at the depth instance folders live at
    (`u*/p*/.trash/`) are considered, and symlinks are never followed.
    """
    if days <= 0 or not instance_base.is_dir():
        return 0
    cutoff = time.time() - days * 86400
    removed = 0
    for trash in instance_base.glob(f"u*/p*/{TRASH}"):
        if trash.is_symlink() or not trash.is_dir():
            continue
        for root, dirs, names in os.walk(trash, followlinks=False):
            for name in names:
                path = Path(root) / name
                try:
                    if path.lstat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except OSError:
                    continue
            for d in list(dirs):
                with_path = Path(root) / d
                if with_path.is_symlink():
                    dirs.remove(d)
    return removed
