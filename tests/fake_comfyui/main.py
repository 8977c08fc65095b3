"""Fake ComfyUI: a stand-in for the external ComfyUI program, used by comfyhub's tests.

It is run exactly like the real one: ``python main.py --listen H --port P
--disable-auto-launch --base-directory DIR [--database-url sqlite:///DIR/user/x.db]
[--disable-metadata]`` with the current directory set to the folder of this file (it
imports its sibling execution.py, which runs the prompts). Unknown flags (``--cpu``,
``--front-end-root X``, ``--preview-method X``, ...) are accepted and ignored.

What it does, like ComfyUI 0.3.64 where comfyhub can observe it:

* exits 1 at once with a traceback if ``DIR/custom_nodes`` does not exist;
* creates ``DIR/{models,input,output,user,temp}``, wipes ``DIR/temp`` at start, touches
  the ``--database-url`` SQLite file;
* logs to stderr only; binds the port only once "loaded" (after the start delay); a
  taken port makes it exit 1 with ``address already in use`` (EADDRINUSE) after loading;
* serves ``/system_stats`` (with ``system.argv``), ``/prompt``, ``/queue``, ``/history``,
  ``/history/{id}``, ``/interrupt``, ``/free``, ``/object_info``, ``/view``,
  ``/upload/image``, ``/ws`` -- each also under ``/api/`` -- plus ``/`` (a page titled
  "Fake ComfyUI" that uses only relative URLs) and ``/scripts/app.js``; with a file
  ``DIR/page_script.js`` the page also loads it (``/scripts/page_script.js``), the way a
  custom node's script runs in ComfyUI's page;
* rejects (403) a request whose ``Origin`` host differs from a loopback ``Host``
  (the real DNS-rebinding guard), so a proxy that rewrites ``Host`` is caught;
* SIGINT: logs "Stopped server", removes ``DIR/temp``, exits 0 at once. SIGTERM: the
  default action (dies at once). A SIGINT that was already ignored when the process
  started stays ignored, as with the real (Python) program. No child processes.

Queue and history, as PromptQueue in execution.py:

* ``POST /prompt`` takes any JSON object as the graph (no validation; ``number``,
  ``front``, ``prompt_id``, ``client_id``, ``extra_data`` as the real one) and answers
  ``{"prompt_id", "number", "node_errors": {}}``; numbers count from 1 (the real ones from 0).
  ``outputs_to_execute`` are the SaveImage and PreviewImage nodes; a prompt with none
  (the real one answers 400) gets its last node id, or "9" when empty, run as a SaveImage.
* ``/queue`` entries are ``[number, prompt_id, prompt, extra_data, outputs_to_execute]``
  (``extra_data`` holds ``client_id``); ``POST /queue`` clears or deletes pending ones.
* ``GET /history`` is ``get_history``: ``max_items=N`` alone gives the newest N;
  ``offset=K`` skips the K oldest, and with it ``max_items`` counts from there; both are
  integers (anything else is a 500, as with the real one). ``/history/{id}`` gives
  ``{id: entry}`` or ``{}``. ``POST /history`` clears or deletes. Oldest first, and
  evicted oldest first: like the real task_done, an entry is dropped only when the
  history already holds *more* than the cap (10000) before adding, so it settles at
  cap + 1 entries.
* An entry is ``{"prompt": [number, prompt_id, prompt, extra_data, outputs], "outputs":
  {node_id: {"images": [{"filename", "subfolder", "type"}]}}, "status": {"status_str":
  "success"|"error", "completed": bool, "messages": [[event, data], ...]}, "meta":
  {node_id: {"node_id", "display_node", "parent_node", "real_node_id"}}}``. extra_data
  keeps ``client_id`` and loses ``auth_token_comfy_org`` and ``api_key_comfy_org``.
  messages: ``execution_start`` {prompt_id, timestamp}, ``execution_cached`` {nodes: [],
  prompt_id, timestamp}, then one of ``execution_success`` {prompt_id, timestamp},
  ``execution_error`` {prompt_id, node_id, node_type, executed, exception_message,
  exception_type, traceback (list of str), current_inputs, current_outputs, timestamp}
  or ``execution_interrupted`` {prompt_id, node_id, node_type, executed, timestamp}
  (interrupted also has status_str "error").

Execution, one prompt at a time in ``number`` order:

* Nodes run in dependency order; each sends ``executing`` {node, display_node,
  prompt_id} to the client. The first save node (or failing node) first waits
  FAKE_COMFYUI_JOB_SECONDS; ``POST /interrupt`` cuts that wait short and the prompt
  ends interrupted, with no files.
* A SaveImage writes PNGs into ``DIR/output``, a PreviewImage into ``DIR/temp`` (type
  "temp", prefix ``ComfyUI_temp_`` + 5 random letters), named like
  folder_paths.get_save_image_path: ``filename_prefix`` "sub/name" gives subfolder
  "sub" and files ``name_00001_.png``, ``name_00002_.png``, ... counting on from the
  highest number already there; ``%width%``, ``%height%``, ``%year%`` ..., and
  ``%batch_num%`` are filled in; a prefix that leaves the output folder is an
  execution_error (exception_type "Exception"). Then ``executed`` {node, display_node,
  output: {images}, prompt_id} goes to the client.
* Image size and count: the EmptyImage reached by following ``images`` (or ``image``)
  links back from the save node gives width, height (each capped to 2048), batch_size
  (capped to 16) and ``color`` (0xRRGGBB; missing inputs take the real defaults 512,
  512, 1, 0). Without one: one 8x8 image whose colour depends on the prompt's number.
* Each PNG has tEXt chunks, between IHDR and IDAT as Pillow's PngInfo writes them:
  ``prompt`` = json.dumps(graph), then one per key of ``extra_data.extra_pnginfo`` (a
  JSON object), e.g. ``workflow`` = json.dumps(value). ``--disable-metadata`` leaves
  them out.
* No caching: every prompt runs all its nodes and writes new files (the real one would
  reuse cached outputs of an identical graph and write nothing new).
* A prompt fails (execution_error, status_str "error", no file written) when
  - a node has an input ``fake_fail`` that is true (true, non-zero, "1"/"true"/"yes"/"on"),
  - or a node has a string input containing ``FAKE_FAIL``,
  - or FAKE_COMFYUI_FAIL_EVERY=N and it is the Nth, 2Nth, ... prompt this process runs
    (interrupted and failed ones count too).
  The error names the first such node (for FAIL_EVERY: the first output node), its
  exception_type is "RuntimeError", and ``executed`` lists the nodes it depends on.
* When a prompt ends, its history entry is added and, in the same step, one line is
  appended to the execution log (written and closed at once, so a kill -9 loses no
  finished prompt). Only then is the final execution_* message sent, followed by
  ``executing`` {node: null, prompt_id}; the real one may send execution_success a
  moment *before* its history has the entry, so wait for ``executing`` with node null.
* Execution log: ``DIR/fake_executions.jsonl`` unless FAKE_COMFYUI_EXECUTION_LOG names
  another file. One JSON object a line: {"prompt_id", "number", "status": "success" |
  "error" | "interrupted", "started", "finished" (Unix time in seconds, float),
  "files": [{"filename", "subfolder", "type"}, ...] (as in the history), "graph_digest":
  sha256 hex of json.dumps(graph, sort_keys=True, separators=(",", ":"),
  ensure_ascii=False) in UTF-8}.
* WebSocket messages go to the ``clientId`` that queued the prompt (``client_id``);
  a prompt without one sends them to nobody, except execution_interrupted, which then
  goes to every socket. ``status`` {queue_remaining} goes to every socket on changes.

comfyhub's extension, loaded as ComfyUI loads it:

* ``--extra-model-paths-config FILE`` (repeatable) adds the folders each config names
  (ComfyUI's format; the fake reads the JSON form comfyhub writes) to folder_paths;
  a missing config is logged and skipped (the real one stops with a traceback);
* the packages in every ``custom_nodes`` folder *other than* ``DIR/custom_nodes`` are
  imported by file, after the aiohttp app exists and before it serves: with
  ``COMFYHUB_SECRET_FILE`` set, comfyhub/comfyui_extension (copied into the instance
  folder by comfyhub) then refuses every request without ``X-Comfyhub-Secret`` (403),
  adds ``X-Comfyhub-Instance`` / ``X-Comfyhub-Binding`` and serves
  ``/comfyhub/identity`` and ``/comfyhub/bind`` -- the real extension's code, not a copy.
  The shared custom nodes are never imported by the fake;
* ``folder_paths.py`` and ``server.py`` beside this file stand in for ComfyUI's modules
  of those names; saving, ``/view`` and ``/upload/image`` use the folders folder_paths
  names at the time, so a bound instance writes and reads in the project's folders.

Fake-only additions, for testing a proxy:

* ``POST /echo`` streams the request body back (chunked, never buffered whole);
* ``/ws`` echoes every text frame as text and every binary frame as binary; the text
  ``close:<code>`` makes it close the socket with that code (e.g. ``close:4001``).
* with ``CUDA_VISIBLE_DEVICES`` set and non-empty, ``/system_stats`` lists one device
  per id, ``{"type": "cuda", "name": "fake-cuda:<id>"}``; otherwise one cpu device.
  (``--cpu`` is ignored.)

Behaviour knobs. Each is read from the environment variable ``FAKE_COMFYUI_<NAME>``
and can be overridden per instance by ``DIR/fake_comfyui.json``, a JSON object whose
keys are the lower-case names (``{"start_delay": 2, "hang": true}``; ``null`` unsets).
The effective values are printed in one log line at start.

  FAKE_COMFYUI_START_DELAY     float s, default 0. Simulated loading: the port is bound
                               no earlier than this long after the process started.
  FAKE_COMFYUI_CRASH_AFTER     float s. That long after becoming ready, print a fatal
                               line and exit with code 3 (os._exit).
  FAKE_COMFYUI_EXIT_CODE       int. At start, before binding: print "fake log line 1"
                               .. "fake log line 30", then "fatal: exiting with code X",
                               and exit with code X.
  FAKE_COMFYUI_HANG            bool. Bind and listen but never accept: a TCP connect
                               succeeds, an HTTP request never gets an answer.
  FAKE_COMFYUI_IGNORE_SIGINT   bool. Ignore SIGINT.
  FAKE_COMFYUI_IGNORE_SIGTERM  bool. Ignore SIGTERM *and* SIGINT: only SIGKILL stops it.
  FAKE_COMFYUI_JOB_SECONDS     float s, default 0.2. How long each queued prompt runs.
  FAKE_COMFYUI_HEALTH_STATUS   int. If set, /system_stats answers with this HTTP status.
  FAKE_COMFYUI_FAIL_EVERY      int. Every Nth prompt run fails (see Execution).
  FAKE_COMFYUI_EXECUTION_LOG   path. The execution log; default DIR/fake_executions.jsonl.
  FAKE_COMFYUI_CRASH_AFTER_SAVE bool. After the first prompt that succeeds has written
                               its files: print a fatal line and exit 3 (os._exit) before
                               its history entry and its execution log line exist.
  FAKE_COMFYUI_HISTORY_CAP     int, default 10000 (the real MAXIMUM_HISTORY_SIZE; fake
                               only, so tests can reach it cheaply).

Booleans accept 1/0, true/false, yes/no, on/off (JSON: true/false or numbers).
A malformed knob value is reported on stderr and the process exits 2.
"""

from __future__ import annotations

import os
import signal
import sys
import time

_T0 = time.monotonic()

# --- SIGINT, handled from the very first moment --------------------------------------

# Python keeps SIGINT ignored when it was ignored at exec time (e.g. a parent started
# with `&` from a script). The real ComfyUI then ignores SIGINT too; so does this fake.
SIGINT_INHERITED_IGNORED = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
_temp_dir_to_remove: str | None = None


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _stop_on_sigint(*_args) -> None:
    log("\nStopped server")
    if _temp_dir_to_remove:
        import shutil

        shutil.rmtree(_temp_dir_to_remove, ignore_errors=True)
    sys.stderr.flush()
    os._exit(0)


if not SIGINT_INHERITED_IGNORED:
    signal.signal(signal.SIGINT, _stop_on_sigint)

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402

VERSION = "0.3.64-fake"
HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (type, default)
KNOBS: dict[str, tuple[type, object]] = {
    "start_delay": (float, 0.0),
    "crash_after": (float, None),
    "exit_code": (int, None),
    "hang": (bool, False),
    "ignore_sigint": (bool, False),
    "ignore_sigterm": (bool, False),
    "job_seconds": (float, 0.2),
    "health_status": (int, None),
    "fail_every": (int, None),
    "execution_log": (str, None),
    "crash_after_save": (bool, False),
    "history_cap": (int, 10000),
}


class KnobError(ValueError):
    pass


def _convert(name: str, kind: type, value: object) -> object:
    if value is None:
        return KNOBS[name][1]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)):
            return bool(value)
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise KnobError(f"{name}: not a boolean: {value!r}")
    if isinstance(value, bool):
        raise KnobError(f"{name}: expected a number, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise KnobError(f"{name}: expected {kind.__name__}, got {value!r}") from None


def read_knobs(base_dir: str) -> tuple[dict[str, object], list[str]]:
    """Environment first, then DIR/fake_comfyui.json on top. Returns (knobs, sources)."""
    knobs = {name: default for name, (_kind, default) in KNOBS.items()}
    sources: list[str] = []
    for name, (kind, _default) in KNOBS.items():
        raw = os.environ.get("FAKE_COMFYUI_" + name.upper())
        if raw is not None and raw.strip() != "":
            knobs[name] = _convert(name, kind, raw.strip())
            sources.append("env")
    path = os.path.join(base_dir, "fake_comfyui.json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise KnobError(f"{path}: {exc}") from None
        if not isinstance(data, dict):
            raise KnobError(f"{path}: expected a JSON object")
        for key, value in data.items():
            name = key.lower()
            if name.startswith("fake_comfyui_"):
                name = name[len("fake_comfyui_") :]
            if name not in KNOBS:
                raise KnobError(f"{path}: unknown knob {key!r}")
            knobs[name] = _convert(name, KNOBS[name][0], value)
        sources.append(path)
    return knobs, sorted(set(sources))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="main.py", allow_abbrev=False, add_help=True)
    parser.add_argument("--listen", type=str, default="127.0.0.1", nargs="?", const="0.0.0.0,::")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--disable-auto-launch", action="store_true")
    parser.add_argument("--base-directory", type=str, default=None)
    parser.add_argument("--database-url", type=str, default=None)
    parser.add_argument("--disable-metadata", action="store_true")
    parser.add_argument("--extra-model-paths-config", type=str, default=None, nargs="+", action="append")
    args, _unknown = parser.parse_known_args(argv)
    return args


def load_extra_path_config(path: str) -> None:
    """ComfyUI's utils/extra_config.load_extra_path_config for the configs comfyhub writes
    (JSON, which is YAML): each section's keys add folders; relative paths are taken from
    the config's folder. A missing or unreadable config is logged and skipped (the real
    one would stop with a traceback)."""
    import folder_paths

    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        log(f"[fake_comfyui] cannot read extra paths config {path}: {exc}")
        return
    here = os.path.dirname(os.path.abspath(path))
    for section in config.values():
        for name, value in (section or {}).items():
            for line in str(value).split("\n"):
                if line:
                    full = line if os.path.isabs(line) else os.path.join(here, line)
                    log(f"Adding extra search path {name} {os.path.normpath(full)}")
                    folder_paths.add_model_folder_path(name, os.path.normpath(full))


def load_custom_nodes(base: str) -> None:
    """Import the packages in the custom_nodes folders *other than* DIR/custom_nodes (the
    shared custom nodes are never run by the fake), the way ComfyUI's nodes.load_custom_node
    does: by file, as a module named after its path. comfyhub's extension arrives this way."""
    import importlib.util

    import folder_paths

    shared = os.path.join(base, "custom_nodes")
    for folder in folder_paths.get_folder_paths("custom_nodes"):
        if folder == shared or not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            init = os.path.join(path, "__init__.py")
            if not os.path.isfile(init):
                continue
            started = time.perf_counter()
            module_name = path.replace(".", "_x_")
            try:
                spec = importlib.util.spec_from_file_location(module_name, init)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
                failed = ""
            except Exception as exc:  # as ComfyUI: a broken node package does not stop the start
                log(f"Cannot import {path} module for custom nodes: {exc}")
                failed = " (IMPORT FAILED)"
            log(f"{time.perf_counter() - started:6.1f} seconds{failed}: {path}")


def fake_traceback(lines: list[str], last: str) -> None:
    out = ["Traceback (most recent call last):"]
    out.extend(lines)
    out.append(last)
    log("\n".join(out))


def prepare_folders(base: str, database_url: str | None) -> None:
    for name in ("models", "input", "output", "user"):
        try:
            os.makedirs(os.path.join(base, name), exist_ok=True)
        except FileExistsError:  # e.g. a dangling symlink: not ours to fix
            pass
    temp = os.path.join(base, "temp")
    if os.path.islink(temp):
        os.unlink(temp)
    shutil.rmtree(temp, ignore_errors=True)
    os.makedirs(temp, exist_ok=True)
    if database_url and database_url.startswith("sqlite:///"):
        path = database_url[len("sqlite:///") :].split("?", 1)[0]
        if path and path != ":memory:":
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            with open(path, "ab"):
                pass


def main() -> None:
    global _temp_dir_to_remove
    args = parse_args(sys.argv[1:])
    base = os.path.abspath(args.base_directory) if args.base_directory else HERE

    try:
        knobs, sources = read_knobs(base)
    except KnobError as exc:
        log(f"fake_comfyui: bad knob: {exc}")
        sys.exit(2)

    # Signal dispositions as early as possible, so they hold during "loading" too.
    ignore_sigint = knobs["ignore_sigint"] or knobs["ignore_sigterm"] or SIGINT_INHERITED_IGNORED
    if ignore_sigint:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if knobs["ignore_sigterm"]:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    custom_nodes = os.path.join(base, "custom_nodes")
    if not os.path.isdir(custom_nodes):
        fake_traceback(
            [
                f'  File "{os.path.join(HERE, "main.py")}", line 1, in <module>',
                "    init_extra_nodes(init_custom_nodes=True)",
                '  File "nodes.py", line 2000, in init_external_custom_nodes',
                "    possible_modules = os.listdir(os.path.realpath(custom_node_path))",
            ],
            f"FileNotFoundError: [Errno 2] No such file or directory: '{custom_nodes}'",
        )
        sys.exit(1)

    prepare_folders(base, args.database_url)
    _temp_dir_to_remove = os.path.join(base, "temp")
    import folder_paths

    folder_paths.init(base)
    for config in [path for group in args.extra_model_paths_config or [] for path in group]:
        load_extra_path_config(config)

    log("Checkpoint files will always be loaded safely.")
    log(f"Python version: {sys.version}")
    log(f"ComfyUI version: {VERSION}")
    log(f"[fake_comfyui] pid {os.getpid()} base directory {base}")
    log(
        "[fake_comfyui] knobs: "
        + " ".join(f"{name}={knobs[name]!r}" for name in KNOBS)
        + f" sigint_inherited_ignored={SIGINT_INHERITED_IGNORED}"
        + f" sources={','.join(sources) or 'defaults'}"
    )

    if knobs["exit_code"] is not None:
        for n in range(1, 31):
            log(f"fake log line {n}")
        code = int(knobs["exit_code"])
        log(f"fatal: exiting with code {code}")
        os._exit(code)

    # "Loading": the heavy imports happen here, then the rest of the start delay.
    import asyncio

    from aiohttp import web  # noqa: F401  (imported for its time cost and for serve())

    log("Import times for custom nodes:")
    log(f"   0.0 seconds: {custom_nodes}")
    log("")
    try:
        asyncio.run(serve(args, base, knobs))
    except KeyboardInterrupt:  # only if SIGINT arrived in a window without our handler
        _stop_on_sigint()


def bind_sockets(listen: str, port: int):
    """Bind every address, like asyncio's create_server. Exits 1 on failure."""
    import errno
    import socket

    socks = []
    seen = set()
    for host in [h.strip() for h in listen.split(",") if h.strip()]:
        try:
            infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        except socket.gaierror as exc:
            fake_traceback(
                ['  File "main.py", line 1, in <module>', "    event_loop.run_until_complete(x)"],
                f"socket.gaierror: {exc}",
            )
            os._exit(1)
        for family, kind, proto, _canon, addr in infos:
            key = (family, addr[:2])
            if key in seen:
                continue
            seen.add(key)
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.listen(128)
            except OSError as exc:
                sock.close()
                for s in socks:
                    s.close()
                name = errno.errorcode.get(exc.errno or 0, "E?")
                log(f"[fake_comfyui] bind to {addr[0]}:{addr[1]} failed: {name}")
                fake_traceback(
                    [
                        '  File "main.py", line 1, in <module>',
                        "    event_loop.run_until_complete(x)",
                        '  File "asyncio/base_events.py", line 1536, in create_server',
                    ],
                    f"OSError: [Errno {exc.errno}] error while attempting to bind on address "
                    f"{addr[:2]!r}: {(exc.strerror or '').lower()}",
                )
                os._exit(1)
            socks.append(sock)
    if not socks:
        log("[fake_comfyui] nothing to listen on")
        os._exit(1)
    return socks


def _gui_lines(listen: str, port: int) -> None:
    first = listen.split(",")[0].strip() or "127.0.0.1"
    shown = f"[{first}]" if ":" in first else first
    log("Starting server\n")
    log(f"To see the GUI go to: http://{shown}:{port}")


async def serve(args: argparse.Namespace, base: str, knobs: dict) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        # Through the loop's wakeup fd, so an idle loop reacts at once.
        loop.add_signal_handler(signal.SIGINT, _stop_on_sigint)

    remaining = float(knobs["start_delay"]) - (time.monotonic() - _T0)
    if remaining > 0:
        await asyncio.sleep(remaining)

    socks = bind_sockets(args.listen, args.port)

    def crash() -> None:
        log("!!! Exception during processing !!!")
        log(f"fatal: fake crash after {knobs['crash_after']} s (FAKE_COMFYUI_CRASH_AFTER)")
        os._exit(3)

    if knobs["hang"]:
        _gui_lines(args.listen, args.port)
        log("[fake_comfyui] hang mode: listening, never accepting")
        if knobs["crash_after"] is not None:
            loop.call_later(float(knobs["crash_after"]), crash)
        await asyncio.Event().wait()
        return

    from aiohttp import web

    app = build_app(base, knobs, disable_metadata=args.disable_metadata)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    for sock in socks:
        await web.SockSite(runner, sock).start()
    _gui_lines(args.listen, args.port)
    if knobs["crash_after"] is not None:
        loop.call_later(float(knobs["crash_after"]), crash)
    await asyncio.Event().wait()


# --- the HTTP application --------------------------------------------------------------

INDEX_HTML = """<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>Fake ComfyUI</title>
<script src="scripts/app.js" defer></script>
</head>
<body>
<h1>Fake ComfyUI</h1>
<p id="status">loading</p>
<p id="ws">ws: connecting</p>
<p id="ws-last"></p>
</body>
</html>
"""

# A file of this name in the base directory is included by the page, as the script of a
# custom node would be: tests put there what a hostile one would do.
PAGE_SCRIPT = "page_script.js"

# Every URL is relative to the page, so it works under a prefix such as /comfy/42/.
APP_JS = """(function () {
  "use strict";
  document.body.setAttribute("data-app", "loaded");
  var statusEl = document.getElementById("status");
  var wsEl = document.getElementById("ws");
  var lastEl = document.getElementById("ws-last");
  fetch("api/system_stats").then(function (r) {
    if (!r.ok) { throw new Error("HTTP " + r.status); }
    return r.json();
  }).then(function (stats) {
    var argv = stats.system.argv, port = "8188";
    for (var i = 0; i < argv.length; i++) {
      if (argv[i] === "--port" && i + 1 < argv.length) { port = argv[i + 1]; }
      else if (argv[i].indexOf("--port=") === 0) { port = argv[i].slice(7); }
    }
    statusEl.setAttribute("data-port", port);
    statusEl.textContent = "port: " + port;
  }).catch(function (e) {
    statusEl.textContent = "error: " + e.message;
  });
  var url = new URL("ws?clientId=abc", window.location.href).href.replace(/^http/, "ws");
  var ws = new WebSocket(url);
  window.fakeComfyWs = ws;
  ws.onopen = function () { wsEl.textContent = "ws: connected"; };
  ws.onmessage = function (ev) { lastEl.textContent = typeof ev.data === "string" ? ev.data : "binary"; };
  ws.onerror = function () { wsEl.textContent = "ws: error"; };
  ws.onclose = function (ev) { wsEl.textContent = "ws: closed " + ev.code; };
})();
"""

OBJECT_INFO = {
    "CheckpointLoaderSimple": {
        "input": {"required": {"ckpt_name": [[]]}},
        "output": ["MODEL", "CLIP", "VAE"],
        "output_is_list": [False, False, False],
        "output_name": ["MODEL", "CLIP", "VAE"],
        "name": "CheckpointLoaderSimple",
        "display_name": "Load Checkpoint",
        "description": "",
        "category": "loaders",
        "output_node": False,
    },
    "EmptyLatentImage": {
        "input": {
            "required": {
                "width": ["INT", {"default": 512}],
                "height": ["INT", {"default": 512}],
                "batch_size": ["INT", {"default": 1}],
            }
        },
        "output": ["LATENT"],
        "output_is_list": [False],
        "output_name": ["LATENT"],
        "name": "EmptyLatentImage",
        "display_name": "Empty Latent Image",
        "description": "",
        "category": "latent",
        "output_node": False,
    },
    "SaveImage": {
        "input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}},
        "output": [],
        "output_is_list": [],
        "output_name": [],
        "name": "SaveImage",
        "display_name": "Save Image",
        "description": "Saves the input images to your ComfyUI output directory.",
        "category": "image",
        "output_node": True,
    },
}


def is_loopback(host: str | None) -> bool:
    """Like ComfyUI's is_loopback, without DNS lookups for arbitrary names."""
    import ipaddress

    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    host = host.lower().rstrip(".")
    return host == "localhost" or host.endswith(".localhost")


def output_nodes(prompt: dict) -> list[str]:
    """outputs_to_execute: the save nodes. A prompt without one (the real ComfyUI refuses
    it) still gets one output: its last node id, or "9" for an empty prompt, run as a
    SaveImage with the default prefix."""
    outputs = [
        k for k, v in prompt.items() if isinstance(v, dict) and v.get("class_type") in ("SaveImage", "PreviewImage")
    ]
    return outputs or [next(reversed(prompt), "9")]


def build_app(base: str, knobs: dict, disable_metadata: bool = False):
    import asyncio
    import hashlib
    import tempfile
    import urllib.parse
    import uuid

    import execution
    import folder_paths
    import server
    from aiohttp import BodyPartReader, WSMsgType, web

    # The folders as folder_paths says now: an instance bound to a project (comfyhub's
    # extension calls folder_paths.set_*_directory) saves, views and uploads there.
    dirs = FolderView(folder_paths)
    sockets: dict[str, web.WebSocketResponse] = {}
    state = {
        "pending": [],  # [number, prompt_id, prompt, extra_data, outputs_to_execute]
        "running": None,
        "counter": 0,
    }
    wakeup = asyncio.Event()

    def queue_remaining() -> int:
        return len(state["pending"]) + (1 if state["running"] else 0)

    async def send(client_id: str | None, event: str, data: dict) -> None:
        targets = list(sockets.values()) if client_id is None else [sockets.get(client_id)]
        for ws in targets:
            if ws is None or ws.closed:
                continue
            try:
                await ws.send_json({"type": event, "data": data})
            except Exception:  # a socket that went away is not an error here
                pass

    async def send_status() -> None:
        await send(None, "status", {"status": {"exec_info": {"queue_remaining": queue_remaining()}}})

    executor = execution.Executor(base, dirs, knobs, send, log, disable_metadata=disable_metadata)
    history = executor.history

    async def worker() -> None:
        while True:
            while not state["pending"]:
                wakeup.clear()
                await wakeup.wait()
            state["pending"].sort(key=lambda e: e[0])
            entry = state["pending"].pop(0)
            state["running"] = entry
            try:
                await executor.run(entry)
            except Exception as exc:  # keep the worker alive whatever happens
                log(f"[fake_comfyui] job failed: {exc!r}")
            finally:
                state["running"] = None
            await send_status()

    # --- middleware ---

    @web.middleware
    async def origin_only_middleware(request, handler):
        # Same rule as ComfyUI's create_origin_only_middleware (server.py).
        if "Host" in request.headers and "Origin" in request.headers:
            host_domain = request.headers["Host"].lower()
            parsed = urllib.parse.urlparse(request.headers["Origin"])
            origin_domain = parsed.netloc.lower()
            host_parsed = urllib.parse.urlsplit("//" + host_domain)
            loopback = is_loopback(host_parsed.hostname)
            try:
                origin_port = parsed.port
                host_port = host_parsed.port
            except ValueError:
                origin_port = host_port = None
            if origin_port is None:
                host_domain = host_parsed.hostname
            if host_port is None:
                origin_domain = parsed.hostname
            if loopback and host_domain and origin_domain and host_domain != origin_domain:
                log(
                    f"WARNING: request with non matching host and origin {host_domain} != {origin_domain}, "
                    "returning 403"
                )
                return web.Response(status=403)
        if request.method == "OPTIONS":
            return web.Response()
        return await handler(request)

    # --- handlers ---

    async def index(request):
        page = INDEX_HTML
        if os.path.isfile(os.path.join(base, PAGE_SCRIPT)):  # a test's stand-in for a custom node's script
            page = page.replace("</head>", f'<script src="scripts/{PAGE_SCRIPT}"></script>\n</head>')
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-cache"})

    async def page_script(request):
        path = os.path.join(base, PAGE_SCRIPT)
        if not os.path.isfile(path):
            return web.Response(status=404)
        with open(path, encoding="utf-8") as f:
            return web.Response(text=f.read(), content_type="application/javascript")

    async def app_js(request):
        return web.Response(text=APP_JS, content_type="application/javascript")

    def devices() -> list[dict]:
        ids = [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
        ids = [x for x in ids if not x.startswith("-")]
        if not ids:
            return [
                {
                    "name": "cpu",
                    "type": "cpu",
                    "index": None,
                    "vram_total": 0,
                    "vram_free": 0,
                    "torch_vram_total": 0,
                    "torch_vram_free": 0,
                }
            ]
        gib16 = 16 * 1024**3
        return [
            {
                "name": f"fake-cuda:{dev}",
                "type": "cuda",
                "index": i,
                "vram_total": gib16,
                "vram_free": gib16,
                "torch_vram_total": 0,
                "torch_vram_free": 0,
            }
            for i, dev in enumerate(ids)
        ]

    async def system_stats(request):
        status = knobs["health_status"]
        if status is not None and int(status) != 200:
            return web.json_response({"error": f"fake health status {status}"}, status=int(status))
        try:
            page = os.sysconf("SC_PAGE_SIZE")
            ram_total = os.sysconf("SC_PHYS_PAGES") * page
            ram_free = os.sysconf("SC_AVPHYS_PAGES") * page
        except (ValueError, OSError, AttributeError):
            ram_total = ram_free = 0
        return web.json_response(
            {
                "system": {
                    "os": os.name,
                    "ram_total": ram_total,
                    "ram_free": ram_free,
                    "comfyui_version": VERSION,
                    "required_frontend_version": "0.0.0-fake",
                    "python_version": sys.version,
                    "pytorch_version": "fake",
                    "embedded_python": False,
                    "argv": sys.argv,
                },
                "devices": devices(),
            }
        )

    async def get_prompt(request):
        return web.json_response({"exec_info": {"queue_remaining": queue_remaining()}})

    async def post_prompt(request):
        log("got prompt")
        try:
            body = await request.json()
        except ValueError:
            body = None
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(prompt, dict):
            return web.json_response(
                {
                    "error": {
                        "type": "no_prompt",
                        "message": "No prompt provided",
                        "details": "No prompt provided",
                        "extra_info": {},
                    },
                    "node_errors": {},
                },
                status=400,
            )
        state["counter"] += 1
        number = state["counter"]
        if body.get("front"):
            number = -number
        elif isinstance(body.get("number"), (int, float)):
            number = float(body["number"])
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        extra = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        outputs = output_nodes(prompt)
        state["pending"].append([number, prompt_id, prompt, extra, outputs])
        wakeup.set()
        await send_status()
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    async def get_queue(request):
        running = [state["running"]] if state["running"] else []
        return web.json_response({"queue_running": running, "queue_pending": list(state["pending"])})

    async def read_json(request) -> dict:
        try:
            data = await request.json()
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    async def post_queue(request):
        data = await read_json(request)
        if data.get("clear"):
            state["pending"].clear()
        for pid in data.get("delete") or []:
            state["pending"] = [e for e in state["pending"] if e[1] != pid]
        await send_status()
        return web.Response(status=200)

    async def get_history(request):
        # As server.py parses them: a value that is not an integer is a 500.
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        return web.json_response(history.get(max_items=max_items, offset=offset))

    async def get_history_one(request):
        return web.json_response(history.get_one(request.match_info["prompt_id"]))

    async def post_history(request):
        data = await read_json(request)
        if data.get("clear"):
            history.clear()
        for pid in data.get("delete") or []:
            history.delete(pid)
        return web.Response(status=200)

    async def post_interrupt(request):
        data = await read_json(request)
        pid = data.get("prompt_id")
        running = state["running"]
        if not pid or (running and running[1] == pid):
            executor.interrupt_running()
        return web.Response(status=200)

    async def post_free(request):
        await read_json(request)
        return web.Response(status=200)

    async def object_info(request):
        return web.json_response(OBJECT_INFO)

    async def object_info_one(request):
        name = request.match_info["node_class"]
        return web.json_response({name: OBJECT_INFO[name]} if name in OBJECT_INFO else {})

    async def empty_list(request):
        return web.json_response([])

    async def view(request):
        # Mirrors ComfyUI's /view checks: 400 for a bad filename, 403 for a subfolder
        # that leaves the folder, 404 for a missing file.
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        filename = query["filename"]
        kind = query.get("type", "output")
        for annotation in ("output", "input", "temp"):
            suffix = f" [{annotation}]"
            if filename.endswith(suffix):
                filename, kind = filename[: -len(suffix)], annotation
        if not filename:
            return web.Response(status=400)
        if filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        folder = dirs.get(kind)
        if folder is None:
            return web.Response(status=400)
        full_dir = folder
        if "subfolder" in query:
            full_dir = os.path.join(folder, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full_dir), folder)) != folder:
                return web.Response(status=403)
        filename = os.path.basename(filename)
        path = os.path.join(full_dir, filename)
        if not os.path.isfile(path):
            return web.Response(status=404)
        return web.FileResponse(path, chunk_size=256 * 1024, headers={"Content-Disposition": f'filename="{filename}"'})

    async def upload_image(request):
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):
            return web.Response(status=400, text="expected multipart/form-data")
        fields: dict[str, str] = {}
        tmp_path = None
        original = None
        digest = hashlib.sha256()
        try:
            async for part in reader:
                if not isinstance(part, BodyPartReader):
                    continue  # nested multipart: not something ComfyUI accepts either
                if part.name == "image" and part.filename is not None and tmp_path is None:
                    original = part.filename
                    os.makedirs(dirs["temp"], exist_ok=True)
                    fd, tmp_path = tempfile.mkstemp(prefix=".upload-", dir=dirs["temp"])
                    with os.fdopen(fd, "wb") as f:
                        while True:
                            chunk = await part.read_chunk(256 * 1024)
                            if not chunk:
                                break
                            digest.update(chunk)
                            f.write(chunk)
                else:
                    fields[part.name or ""] = await part.text()
            if tmp_path is None or not original:
                return web.Response(status=400)
            kind = fields.get("type", "input")
            if kind not in dirs:
                kind = "input"
            upload_dir = dirs[kind]
            subfolder = fields.get("subfolder", "")
            full_dir = os.path.join(upload_dir, os.path.normpath(subfolder))
            filepath = os.path.abspath(os.path.join(full_dir, original))
            if os.path.commonpath((upload_dir, filepath)) != upload_dir:
                return web.Response(status=400)
            os.makedirs(os.path.dirname(filepath), exist_ok=True)
            filename = original
            if fields.get("overwrite") not in ("true", "1"):
                i = 1
                stem, ext = os.path.splitext(original)
                while os.path.exists(filepath):
                    if same_content(filepath, digest.hexdigest()):
                        os.unlink(tmp_path)
                        tmp_path = None
                        break
                    filename = f"{stem} ({i}){ext}"
                    filepath = os.path.join(os.path.dirname(filepath), filename)
                    i += 1
            if tmp_path is not None:
                shutil.move(tmp_path, filepath)
                tmp_path = None
            return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})
        finally:
            if tmp_path is not None:
                try:
                    os.unlink(tmp_path)
                except OSError:
                    pass

    def same_content(path: str, hexdigest: str) -> bool:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1024 * 1024), b""):
                h.update(block)
        return h.hexdigest() == hexdigest

    async def echo(request):
        # Fake-only: the body goes back as it arrives, chunk by chunk.
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": request.headers.get("Content-Type", "application/octet-stream")},
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        async for chunk in request.content.iter_chunked(256 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def websocket(request):
        ws = web.WebSocketResponse(max_msg_size=64 * 1024 * 1024)
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId") or uuid.uuid4().hex
        sockets[sid] = ws  # a reconnect with the same id replaces the old socket
        try:
            await ws.send_json(
                {
                    "type": "status",
                    "data": {"status": {"exec_info": {"queue_remaining": queue_remaining()}}, "sid": sid},
                }
            )
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    if msg.data.startswith("close:"):
                        try:
                            code = int(msg.data[len("close:") :])
                        except ValueError:
                            code = None
                        if code is not None:
                            await ws.close(code=code, message=b"close requested")
                            break
                    await ws.send_str(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    log(f"ws connection closed with exception {ws.exception()}")
        finally:
            if sockets.get(sid) is ws:
                del sockets[sid]
        return ws

    app = web.Application(middlewares=[origin_only_middleware], client_max_size=100 * 1024 * 1024)
    routes = [
        ("GET", "/", index),
        ("GET", "/ws", websocket),
        ("GET", "/system_stats", system_stats),
        ("GET", "/prompt", get_prompt),
        ("POST", "/prompt", post_prompt),
        ("GET", "/queue", get_queue),
        ("POST", "/queue", post_queue),
        ("GET", "/history", get_history),
        ("GET", "/history/{prompt_id}", get_history_one),
        ("POST", "/history", post_history),
        ("POST", "/interrupt", post_interrupt),
        ("POST", "/free", post_free),
        ("GET", "/object_info", object_info),
        ("GET", "/object_info/{node_class}", object_info_one),
        ("GET", "/embeddings", empty_list),
        ("GET", "/extensions", empty_list),
        ("GET", "/view", view),
        ("POST", "/upload/image", upload_image),
        ("POST", "/echo", echo),
    ]
    for prefix in ("", "/api"):
        for method, path, handler in routes:
            if method == "GET":
                app.router.add_get(prefix + path, handler)
            else:
                app.router.add_route(method, prefix + path, handler)
    # Front-end files are served at the root only, as ComfyUI's static routes are.
    app.router.add_get("/scripts/app.js", app_js)
    app.router.add_get(f"/scripts/{PAGE_SCRIPT}", page_script)

    async def start_worker(app_):
        app_["worker"] = asyncio.get_running_loop().create_task(worker())

    app.on_startup.append(start_worker)
    # As in ComfyUI: the server object exists (its app not yet frozen) when custom nodes load.
    server.PromptServer(app)
    load_custom_nodes(base)
    return app


class FolderView:
    """{"input" | "output" | "temp": folder}, read from folder_paths at every use."""

    def __init__(self, folder_paths):
        self._fp = folder_paths

    def get(self, kind: str, default=None):
        return self._fp.get_directory_by_type(kind) or default

    def __getitem__(self, kind: str) -> str:
        folder = self.get(kind)
        if folder is None:
            raise KeyError(kind)
        return folder

    def __contains__(self, kind: str) -> bool:
        return self.get(kind) is not None


if __name__ == "__main__":
    main()
