"""Prompt execution and history of the fake ComfyUI (main.py's docstring is the spec).

Shaped after ComfyUI 0.3.64's execution.py (PromptExecutor, PromptQueue), nodes.py
(SaveImage, PreviewImage, EmptyImage) and folder_paths.get_save_image_path, where
comfyhub can observe them: history entries, status messages, files and their PNG text
chunks. No model runs: a prompt waits FAKE_COMFYUI_JOB_SECONDS, then its save nodes write
flat-colour PNGs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import struct
import time
import traceback
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

MAXIMUM_HISTORY_SIZE = 10000
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
# class_type -> (folder, suffix added to the prefix (plus 5 random letters), compress level)
SAVE_NODES = {"SaveImage": ("output", "", 4), "PreviewImage": ("temp", "_temp_", 1)}
MAX_SIDE = 2048
MAX_BATCH = 16
FAIL_TEXT = "FAKE_FAIL"


# --- history ------------------------------------------------------------------------------


class History:
    """PromptQueue's history: insertion-ordered, oldest evicted first."""

    def __init__(self, cap: int = MAXIMUM_HISTORY_SIZE):
        self.cap = cap
        self.items: dict[str, dict] = {}

    def add(self, prompt_id: str, entry: dict) -> None:
        # The real task_done checks "> MAXIMUM_HISTORY_SIZE" *before* adding, so the
        # history settles at cap + 1 entries. Kept as is: comfyhub sees exactly that.
        if len(self.items) > self.cap and self.items:
            self.items.pop(next(iter(self.items)))
        self.items[prompt_id] = entry

    def get(self, max_items: int | None = None, offset: int = -1) -> dict:
        """PromptQueue.get_history without a prompt id, line for line: max_items alone
        gives the newest N; offset counts from the oldest, max_items from there."""
        out = {}
        if offset < 0 and max_items is not None:
            offset = len(self.items) - max_items
        for i, (key, value) in enumerate(self.items.items()):
            if i >= offset:
                out[key] = value
                if max_items is not None and len(out) >= max_items:
                    break
        return out

    def get_one(self, prompt_id: str) -> dict:
        entry = self.items.get(prompt_id)
        return {prompt_id: entry} if entry is not None else {}

    def clear(self) -> None:
        self.items.clear()

    def delete(self, prompt_id: str) -> None:
        self.items.pop(prompt_id, None)


# --- the graph ------------------------------------------------------------------------------


def is_link(value: object) -> bool:
    """comfy_execution.graph_utils.is_link: ["node id", output index]."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], (int, float))
        and not isinstance(value[1], bool)
    )


def node_of(graph: dict, node_id: str) -> dict:
    node = graph.get(node_id)
    return node if isinstance(node, dict) else {}


def inputs_of(graph: dict, node_id: str) -> dict:
    inputs = node_of(graph, node_id).get("inputs")
    return inputs if isinstance(inputs, dict) else {}


def class_of(graph: dict, node_id: str) -> str:
    # An output node missing from the graph is the fake's stand-in for prompts without a
    # save node (see output_nodes in main.py); it behaves as a SaveImage.
    class_type = node_of(graph, node_id).get("class_type")
    return class_type if isinstance(class_type, str) else "SaveImage"


def execution_order(graph: dict, targets: list[str]) -> list[str]:
    """Every target after the nodes it depends on (depth first, each node once)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen:
            return
        seen.add(node_id)  # before the inputs: a cycle stops here instead of recursing
        for value in inputs_of(graph, node_id).values():
            if is_link(value) and value[0] in graph:
                visit(value[0])
        order.append(node_id)

    for target in targets:
        visit(target)
    return order


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return isinstance(value, (bool, int, float)) and bool(value)


def fail_reason(graph: dict, node_id: str) -> str | None:
    """Why this node is asked to fail: an input fake_fail that is true, or a string input
    that contains FAKE_FAIL."""
    for name, value in inputs_of(graph, node_id).items():
        if name == "fake_fail" and _truthy(value):
            return f"input 'fake_fail' of node {node_id} is true"
        if isinstance(value, str) and FAIL_TEXT in value:
            return f"input '{name}' of node {node_id} contains {FAIL_TEXT}"
    return None


def requested_failure(graph: dict, outputs: list[str]) -> tuple[str, str] | None:
    """(node id, reason) of the first node asked to fail: those the outputs depend on
    first, then the rest of the graph."""
    candidates = execution_order(graph, outputs) + [k for k in graph if isinstance(k, str)]
    for node_id in candidates:
        reason = fail_reason(graph, node_id)
        if reason:
            return node_id, reason
    return None


def graph_digest(graph: object) -> str:
    canonical = json.dumps(graph, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- images ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    width: int
    height: int
    batch: int
    rgb: tuple[int, int, int]


def _int_input(inputs: dict, name: str, default: int, low: int, high: int) -> int:
    value = inputs.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        value = default
    return max(low, min(high, int(value)))


def image_spec(graph: dict, node_id: str, seed: int) -> ImageSpec:
    """What the save node gets: the EmptyImage found by following `images` (or `image`)
    links back from it, with its size, batch and colour (capped); otherwise one 8x8 image
    whose colour depends on seed."""
    current = node_id
    for _ in range(len(graph) + 1):
        node = node_of(graph, current)
        if node.get("class_type") == "EmptyImage":
            inputs = inputs_of(graph, current)
            color = _int_input(inputs, "color", 0, 0, 0xFFFFFF)
            return ImageSpec(
                width=_int_input(inputs, "width", 512, 1, MAX_SIDE),
                height=_int_input(inputs, "height", 512, 1, MAX_SIDE),
                batch=_int_input(inputs, "batch_size", 1, 1, MAX_BATCH),
                rgb=((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF),
            )
        inputs = inputs_of(graph, current)
        link = inputs.get("images", inputs.get("image"))
        if not is_link(link):
            break
        current = link[0]
    return ImageSpec(8, 8, 1, ((seed * 53) % 256, (seed * 97) % 256, (seed * 151) % 256))


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(spec: ImageSpec, texts: list[tuple[str, str]], level: int = 4) -> bytes:
    """An RGB PNG of one colour; each text becomes a tEXt chunk between IHDR and IDAT, as
    Pillow's PngInfo.add_text writes them (latin-1; json.dumps output is ASCII)."""
    row = b"\x00" + bytes(spec.rgb) * spec.width
    ihdr = struct.pack(">IIBBBBB", spec.width, spec.height, 8, 2, 0, 0, 0)
    text_chunks = b"".join(
        _chunk(b"tEXt", key.encode("latin-1", "replace") + b"\0" + value.encode("latin-1", "replace"))
        for key, value in texts
    )
    idat = zlib.compress(row * spec.height, level)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + text_chunks + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def png_texts(graph: dict, extra_data: dict, disable_metadata: bool) -> list[tuple[str, str]]:
    """SaveImage's metadata: "prompt", then one chunk per extra_pnginfo key."""
    if disable_metadata:
        return []
    texts = [("prompt", json.dumps(graph))]
    extra_pnginfo = extra_data.get("extra_pnginfo")
    if isinstance(extra_pnginfo, dict):
        texts.extend((str(key), json.dumps(value)) for key, value in extra_pnginfo.items())
    return texts


def save_image_path(filename_prefix: str, output_dir: str, width: int, height: int) -> tuple[str, str, int, str]:
    """folder_paths.get_save_image_path: (full folder, file name, counter, subfolder)."""

    def map_filename(filename: str) -> tuple[int, str]:
        prefix_len = len(os.path.basename(filename_prefix))
        prefix = filename[: prefix_len + 1]
        try:
            digits = int(filename[prefix_len + 1 :].split("_")[0])
        except ValueError:
            digits = 0
        return digits, prefix

    if "%" in filename_prefix:
        now = time.localtime()
        for name, value in (
            ("width", str(width)),
            ("height", str(height)),
            ("year", str(now.tm_year)),
            ("month", str(now.tm_mon).zfill(2)),
            ("day", str(now.tm_mday).zfill(2)),
            ("hour", str(now.tm_hour).zfill(2)),
            ("minute", str(now.tm_min).zfill(2)),
            ("second", str(now.tm_sec).zfill(2)),
        ):
            filename_prefix = filename_prefix.replace(f"%{name}%", value)

    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(full_output_folder))) != output_dir:
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(full_output_folder)}"
            f"\n         output_dir: {output_dir}"
        )
    try:
        matches = [
            digits
            for digits, prefix in map(map_filename, os.listdir(full_output_folder))
            if os.path.normcase(prefix[:-1]) == os.path.normcase(filename) and prefix[-1:] == "_"
        ]
        counter = max(matches) + 1 if matches else 1
    except FileNotFoundError:
        os.makedirs(full_output_folder, exist_ok=True)
        counter = 1
    return full_output_folder, filename, counter, subfolder


def save_images(
    graph: dict, node_id: str, extra_data: dict, dirs: dict[str, str], seed: int, disable_metadata: bool
) -> list[dict]:
    """SaveImage.save_images / PreviewImage: write the batch, return the ui images."""
    folder, suffix, level = SAVE_NODES.get(class_of(graph, node_id), SAVE_NODES["SaveImage"])
    prefix = inputs_of(graph, node_id).get("filename_prefix")
    if not isinstance(prefix, str) or not prefix:
        prefix = "ComfyUI"
    if suffix:
        prefix += suffix + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    spec = image_spec(graph, node_id, seed)
    output_dir = dirs[folder]
    os.makedirs(output_dir, exist_ok=True)
    full_folder, filename, counter, subfolder = save_image_path(prefix, output_dir, spec.width, spec.height)
    data = png_bytes(spec, png_texts(graph, extra_data, disable_metadata), level)  # a batch is one colour
    results = []
    for batch_number in range(spec.batch):
        file = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        with open(os.path.join(full_folder, file), "wb") as f:
            f.write(data)
        results.append({"filename": file, "subfolder": subfolder, "type": folder})
        counter += 1
    return results


# --- the execution log -------------------------------------------------------------------------


def append_log(path: str, record: dict) -> None:
    """One JSON line, written and closed at once: in the kernel's hands before the next
    await, so a kill -9 of the fake loses no finished execution."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()


# --- running one prompt -----------------------------------------------------------------------


def _raise_requested_failure(reason: str) -> None:
    raise RuntimeError(f"fake failure: {reason}")


def full_type_name(klass: type) -> str:
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def format_value(value: object) -> object:
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)


def current_inputs(graph: dict, node_id: str) -> dict:
    """Like the real error's current_inputs: each input as a one-item list; a linked
    input shows as a string, as a tensor would."""
    out = {}
    for name, value in inputs_of(graph, node_id).items():
        if is_link(value):
            value = f"<output {value[1]} of node {value[0]}>"
        out[name] = [format_value(value)]
    return out


Send = Callable[[str | None, str, dict], Awaitable[None]]


class _Run:
    """One execution: what it has gathered so far, and its way to the client."""

    def __init__(self, entry: list, send: Send):
        self.number, self.prompt_id, graph, self.extra, self.targets = entry
        self.graph = graph if isinstance(graph, dict) else {}
        self.client_id = self.extra.get("client_id")
        self.send = send
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.messages: list[list] = []
        self.outputs: dict[str, dict] = {}
        self.meta: dict[str, dict] = {}
        self.files: list[dict] = []
        self.executed: list[str] = []
        self.final: tuple[str, dict, bool] | None = None

    async def message(self, event: str, data: dict, broadcast: bool = False, final: bool = False) -> None:
        """PromptExecutor.add_message: kept for the history's status, sent to the client
        that queued the prompt (to everyone when broadcast and there is none). The final
        one waits for send_final: the fake sends it once the history has the entry."""
        data = {**data, "timestamp": int(time.time() * 1000)}
        self.messages.append([event, data])
        if final:
            self.final = (event, data, broadcast)
        elif self.client_id is not None or broadcast:
            await self.send(self.client_id, event, data)

    async def send_final(self) -> None:
        if self.final is not None:
            event, data, broadcast = self.final
            if self.client_id is not None or broadcast:
                await self.send(self.client_id, event, data)

    async def to_client(self, event: str, data: dict) -> None:
        if self.client_id is not None:
            await self.send(self.client_id, event, data)


class Executor:
    """Runs queue entries one at a time and keeps the history (PromptExecutor and the
    history half of PromptQueue)."""

    def __init__(
        self,
        base: str,
        dirs: dict[str, str],
        knobs: dict,
        send: Send,
        log: Callable[[str], None],
        disable_metadata: bool = False,
    ):
        self.dirs = dirs
        self.knobs = knobs
        self.send = send
        self.log = log
        self.disable_metadata = disable_metadata
        self.history = History(int(knobs.get("history_cap", MAXIMUM_HISTORY_SIZE)))
        self.log_path = knobs.get("execution_log") or os.path.join(base, "fake_executions.jsonl")
        self.executed_count = 0
        self.interrupt: asyncio.Event | None = None

    def interrupt_running(self) -> None:
        if self.interrupt is not None:
            self.interrupt.set()

    async def run(self, entry: list) -> None:
        self.executed_count += 1
        run = _Run(entry, self.send)
        await run.message("execution_start", {"prompt_id": run.prompt_id})
        await run.message("execution_cached", {"nodes": [], "prompt_id": run.prompt_id})
        status = await self._execute(run)
        if status == "success" and run.files and self.knobs.get("crash_after_save"):
            self.log("fatal: fake crash after saving files, before the history (FAKE_COMFYUI_CRASH_AFTER_SAVE)")
            os._exit(3)
        self._finish(run, status)
        await run.send_final()
        await run.to_client("executing", {"node": None, "prompt_id": run.prompt_id})
        self.log(f"Prompt executed in {time.monotonic() - run.started:.2f} seconds")

    async def _execute(self, run: _Run) -> str:
        """The nodes in order; "success", "error" or "interrupted"."""
        failure = self._failure(run)
        # A node asked to fail runs first, before any save node: a failed prompt writes no file.
        order = execution_order(run.graph, [failure[0]] if failure else run.targets)
        paused = False
        for node_id in order:
            await run.to_client("executing", {"node": node_id, "display_node": node_id, "prompt_id": run.prompt_id})
            failing = failure is not None and node_id == failure[0]
            if (failing or node_id in run.targets) and not paused:
                paused = True  # the simulated work happens once, in the first such node
                if await self._pause():
                    await self._report_interrupt(run, node_id)
                    return "interrupted"
            try:
                if failing:
                    _raise_requested_failure(failure[1])
                if node_id in run.targets:
                    await self._save(run, node_id)
            except Exception as exc:
                await self._report_error(run, node_id, exc)
                return "error"
            run.executed.append(node_id)
        await run.message("execution_success", {"prompt_id": run.prompt_id}, final=True)
        return "success"

    def _failure(self, run: _Run) -> tuple[str, str] | None:
        """(node id, reason) when this prompt must fail."""
        requested = requested_failure(run.graph, run.targets)
        if requested:
            return requested
        every = int(self.knobs.get("fail_every") or 0)
        if every > 0 and self.executed_count % every == 0:
            return run.targets[0], f"every {every}th prompt fails (FAKE_COMFYUI_FAIL_EVERY={every})"
        return None

    async def _pause(self) -> bool:
        """The simulated work; True when /interrupt cut it short."""
        self.interrupt = asyncio.Event()
        try:
            await asyncio.wait_for(self.interrupt.wait(), timeout=float(self.knobs["job_seconds"]))
            return True
        except TimeoutError:
            return False
        finally:
            self.interrupt = None

    async def _save(self, run: _Run, node_id: str) -> None:
        # In a thread: a 2048x2048 batch takes a moment to encode.
        images = await asyncio.to_thread(
            save_images, run.graph, node_id, run.extra, self.dirs, int(run.number), self.disable_metadata
        )
        run.outputs[node_id] = {"images": images}
        run.meta[node_id] = {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}
        run.files.extend(images)
        output = {"node": node_id, "display_node": node_id, "output": {"images": images}}
        await run.to_client("executed", {**output, "prompt_id": run.prompt_id})

    async def _report_interrupt(self, run: _Run, node_id: str) -> None:
        self.log("Processing interrupted")
        data = {
            "prompt_id": run.prompt_id,
            "node_id": node_id,
            "node_type": class_of(run.graph, node_id),
            "executed": list(run.executed),
        }
        await run.message("execution_interrupted", data, broadcast=True, final=True)

    async def _report_error(self, run: _Run, node_id: str, exc: Exception) -> None:
        self.log(f"!!! Exception during processing !!! {exc}")
        self.log("".join(traceback.format_exception(exc)).rstrip())
        tips = ""  # the real one adds advice for out-of-memory errors only
        data = {
            "prompt_id": run.prompt_id,
            "node_id": node_id,
            "node_type": class_of(run.graph, node_id),
            "executed": list(run.executed),
            "exception_message": f"{exc}\n{tips}",
            "exception_type": full_type_name(type(exc)),
            "traceback": traceback.format_tb(exc.__traceback__),
            "current_inputs": current_inputs(run.graph, node_id),
            "current_outputs": [],
        }
        await run.message("execution_error", data, final=True)

    def _finish(self, run: _Run, status: str) -> None:
        """PromptQueue.task_done, then the execution log line, in one step (no await)."""
        kept_extra = {k: v for k, v in run.extra.items() if k not in SENSITIVE_EXTRA_DATA_KEYS}
        success = status == "success"
        outcome = {"status_str": "success" if success else "error", "completed": success, "messages": run.messages}
        self.history.add(
            run.prompt_id,
            {
                "prompt": [run.number, run.prompt_id, run.graph, kept_extra, run.targets],
                "outputs": run.outputs,
                "status": outcome,
                "meta": run.meta,
            },
        )
        append_log(
            self.log_path,
            {
                "prompt_id": run.prompt_id,
                "number": run.number,
                "status": status,
                "started": run.started_wall,
                "finished": time.time(),
                "files": run.files,
                "graph_digest": graph_digest(run.graph),
            },
        )
