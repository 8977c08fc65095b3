"""An instance's files: its folder under COMFYUI_INSTANCE_BASE_DIR and its log file.

Nothing here deletes what a user made (input/, output/, user/): invariant 7.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import comfyhub
from comfyhub.config import Settings
from comfyhub.launchers.base import EXTENSION_CONFIG

# comfyhub's ComfyUI extension: copied into each instance folder, so it loads wherever
# the folder is mounted (a Ray node may have comfyhub installed at another path).
EXTENSION_SOURCE = Path(comfyhub.__file__).parent / "comfyui_extension" / "__init__.py"
EXTENSION_NAME = "comfyhub_extension"
BOUND_DIRS = ("output", "input", "temp", "user")


def instance_dir(settings: Settings, user_id: int, project_id: int) -> Path:
    return settings.instance_dir(user_id, project_id)


def log_path(settings: Settings, user_id: int, project_id: int, port: int) -> Path:
    return settings.comfyui_log_dir / f"comfy_u{user_id}_p{project_id}_{port}.log"


def shared_dirs(settings: Settings) -> dict[str, Path | None]:
    repo = settings.comfyui_repo_path
    return {
        "custom_nodes": settings.comfyui_custom_nodes_dir or (repo / "custom_nodes" if repo else None),
        "models": settings.comfyui_models_dir or (repo / "models" if repo else None),
    }


def prepare_instance_dir(settings: Settings, user_id: int, project_id: int) -> Path:
    """Create the instance folder and link the shared custom_nodes/ and models/ into it.

    Idempotent: a folder deleted by hand is recreated and broken links are restored.
    A real folder the user put in place of a link is left alone.
    """
    base = instance_dir(settings, user_id, project_id)
    for sub in ("input", "output", "user", "temp"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for name, shared in shared_dirs(settings).items():
        target = base / name
        if shared is not None and shared.is_dir():
            if target.is_symlink() and Path(os.readlink(target)) != shared:
                target.unlink()
            if not target.exists() and not target.is_symlink():
                target.symlink_to(shared, target_is_directory=True)
            elif target.is_symlink() and not target.exists():  # dangling
                target.unlink()
                target.symlink_to(shared, target_is_directory=True)
        else:
            if target.is_symlink() and not target.exists():
                target.unlink()
            target.mkdir(exist_ok=True)  # ComfyUI exits at once without custom_nodes/
    install_extension(base)
    return base


def install_extension(base: Path) -> Path:
    """Put comfyhub's extension and the ComfyUI path config naming it in `base`/.comfyhub/.

    ComfyUI loads custom nodes from every `custom_nodes` path it knows; the config adds
    one (`.comfyhub/custom_nodes`), so the shared custom nodes folder is never written to
    and the instance's `custom_nodes` link stays as it is. Rewritten only when it changed
    (an upgrade of comfyhub updates every instance at its next start).
    """
    home = base / Path(EXTENSION_CONFIG).parent
    home.mkdir(mode=0o700, exist_ok=True)
    nodes = home / "custom_nodes"
    package = nodes / EXTENSION_NAME
    package.mkdir(parents=True, exist_ok=True)
    _write_if_changed(package / "__init__.py", EXTENSION_SOURCE.read_bytes())
    # JSON is YAML: no quoting rules to get wrong for an odd path.
    config = json.dumps({"comfyhub": {"custom_nodes": str(nodes)}}, indent=1) + "\n"
    _write_if_changed(base / EXTENSION_CONFIG, config.encode())
    return base / EXTENSION_CONFIG


def _write_if_changed(path: Path, data: bytes) -> None:
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # never a half-written file for a ComfyUI starting meanwhile


def project_dirs(settings: Settings, user_id: int, project_id: int) -> dict[str, str]:
    """The folders a project's instance uses (output, input, temp, user), created if missing:
    what a pre-started instance is bound to (services/binding.py)."""
    base = instance_dir(settings, user_id, project_id)
    dirs = {}
    for kind in BOUND_DIRS:
        (base / kind).mkdir(parents=True, exist_ok=True)
        dirs[kind] = str((base / kind).resolve())
    return dirs


def mark_start(path: Path, port: int, argv: list[str]) -> None:
    """Append the line that separates one start from the previous ones in the same log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n===== comfyhub: starting ComfyUI on port {port} at {stamp} =====\n")
        f.write(f"===== command: {' '.join(argv)}\n")


def mark_event(path: Path | str, what: str) -> None:
    """Append a comfyhub line (stop, crash, failure) so the log tells the whole story."""
    if not path:
        return
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"===== comfyhub: {what} at {stamp} =====\n")
    except OSError:
        pass  # the log dir may be gone or read-only; the record still says what happened


def tail(path: Path | str, lines: int, max_bytes: int = 1 << 20) -> str:
    """The last `lines` lines of a file, reading at most `max_bytes` from its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""
