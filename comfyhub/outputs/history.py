"""ComfyUI's history entries, read into what comfyhub stores.

`GET /history` answers `{prompt_id: entry}`, each entry
`{"prompt": [number, prompt_id, graph, extra_data, output_node_ids],
"outputs": {node_id: {"images": [{"filename", "subfolder", "type"}], ...}},
"status": {"status_str": "success" | "error", "completed", "messages": [[event, data]]}}`.
The entries come from the instance, which runs the user's custom nodes: every field is
checked, and anything malformed is skipped rather than trusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath

# Output kinds a node may list; `temp` previews are wiped by every restart, so only
# `output` files are records of what was generated.
KEPT_TYPE = "output"
MAX_NAME = 255
MAX_SUBFOLDER = 512


@dataclass(frozen=True)
class FileRef:
    """A file an output node reported, relative to the instance's output/ folder."""

    node_id: str
    filename: str
    subfolder: str
    type: str = KEPT_TYPE


@dataclass
class Finished:
    """One finished prompt, as ComfyUI's history describes it."""

    prompt_id: str
    status: str  # success | error | interrupted
    number: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    graph: dict | None = None
    error: str = ""
    files: list[FileRef] = field(default_factory=list)


def parse_history(answer) -> list[Finished]:
    """Every well-formed entry of a /history answer, in the answer's (queue) order."""
    if not isinstance(answer, dict):
        return []
    out = []
    for prompt_id, entry in answer.items():
        parsed = parse_entry(prompt_id, entry)
        if parsed is not None:
            out.append(parsed)
    return out


def parse_entry(prompt_id, entry) -> Finished | None:
    if not isinstance(prompt_id, str) or not 0 < len(prompt_id) <= 64 or not isinstance(entry, dict):
        return None
    prompt = entry.get("prompt")
    number = graph = None
    if isinstance(prompt, list) and len(prompt) >= 3:
        number = prompt[0] if isinstance(prompt[0], int | float) and not isinstance(prompt[0], bool) else None
        graph = finite(prompt[2]) if isinstance(prompt[2], dict) else None
    finished = Finished(prompt_id=prompt_id, status="success", number=number, graph=graph)
    _read_status(entry.get("status"), finished)
    finished.files = list(_files(entry.get("outputs")))
    return finished


def finite(value, depth: int = 0):
    """`value` with every NaN and ±Infinity made None: ComfyUI's JSON may carry them (a
    float input), and PostgreSQL refuses them in a JSON column."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth > 64:
        return None
    if isinstance(value, dict):
        return {k: finite(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v, depth + 1) for v in value]
    return value


def _read_status(status, finished: Finished) -> None:
    if not isinstance(status, dict):
        return
    if status.get("status_str") == "error":
        finished.status = "error"
    messages = status.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if not (isinstance(message, list) and len(message) == 2 and isinstance(message[1], dict)):
            continue
        event, data = message
        at = _time(data.get("timestamp"))
        if event == "execution_start":
            finished.started_at = at
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            finished.finished_at = at
            if event == "execution_error":
                finished.status = "error"
                finished.error = _error_text(data)
            elif event == "execution_interrupted":
                finished.status = "interrupted"
                finished.error = "interrupted"


def _error_text(data: dict) -> str:
    kind = data.get("exception_type") or "error"
    message = data.get("exception_message") or ""
    where = " ".join(str(data.get(k)) for k in ("node_type", "node_id") if data.get(k) is not None)
    text = f"{kind}: {message}".strip()
    return f"{text} [{where}]" if where else text


def _time(ms) -> datetime | None:
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _files(outputs):
    if not isinstance(outputs, dict):
        return
    for node_id, per_node in outputs.items():
        if not isinstance(per_node, dict):
            continue
        for items in per_node.values():
            for item in items if isinstance(items, list) else []:
                ref = file_ref(str(node_id)[:64], item)
                if ref is not None:
                    yield ref


def file_ref(node_id: str, item) -> FileRef | None:
    """A checked file reference, or None for anything that is not a plain kept file."""
    if not isinstance(item, dict) or item.get("type", KEPT_TYPE) != KEPT_TYPE:
        return None
    filename, subfolder = item.get("filename"), item.get("subfolder") or ""
    if not isinstance(filename, str) or not isinstance(subfolder, str):
        return None
    if not safe_name(filename) or not safe_subfolder(subfolder):
        return None
    return FileRef(node_id=node_id, filename=filename, subfolder=subfolder.strip("/"))


def safe_name(name: str) -> bool:
    return (
        0 < len(name) <= MAX_NAME
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


def safe_subfolder(subfolder: str) -> bool:
    if len(subfolder) > MAX_SUBFOLDER or "\0" in subfolder or "\\" in subfolder or subfolder.startswith("/"):
        return False
    return all(part not in ("..", ".") for part in PurePosixPath(subfolder).parts)
