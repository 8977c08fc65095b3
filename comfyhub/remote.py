"""`comfyhub jobs submit|watch`: batch jobs (批量生成) on a running comfyhub, over its HTTP API.

The commands talk to the server at COMFYHUB_URL (default http://127.0.0.1:8000) as the
owner of COMFYHUB_TOKEN, a personal access token (`chp_…`, 访问令牌 in the workbench),
exactly as any script would: no database, no settings, nothing of the server imported.
So they work from another machine, and the server alone decides what is valid: the
parameters file is sent as it is (CSV and JSONL as text), so a refusal names the row
and column as the user's file numbers them.

Only the standard library's urllib: two JSON requests and a poll need no more, and the
`comfyhub` command keeps its dependencies (httpx is a test dependency only).

Exit codes: 0 done (or submitted, without --watch); 1 comfyhub unreachable or failing
(5xx); 2 refused (a 4xx: bad parameters, a missing or revoked token, no such project or
job) or bad local files; 3 the job ended with some items failed; 4 the job failed or
was cancelled; 130 watching was interrupted (the job goes on).
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

DEFAULT_URL = "http://127.0.0.1:8000"
REQUEST_TIMEOUT = 120.0  # a 100,000-row job is checked and stored before the reply
UNREACHABLE_GRACE = 60.0  # while watching, how long a server restart may take

EXIT_OK, EXIT_UNREACHABLE, EXIT_REFUSED, EXIT_ITEMS_FAILED, EXIT_JOB_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
FINAL_STATES = ("done", "failed", "cancelled")

NO_TOKEN = (
    "COMFYHUB_TOKEN is not set: create a personal access token under 访问令牌 in the workbench's "
    "top bar and export COMFYHUB_TOKEN=chp_…"
)
BAD_TOKEN = (
    "comfyhub refused COMFYHUB_TOKEN ({msg}): the token is missing, revoked or expired; "
    "create a new one under 访问令牌 in the workbench's top bar"
)


class RemoteError(Exception):
    """A one-line reason for the user and the exit code that goes with it."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.message, self.exit_code = message, exit_code


# --- the server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hub:
    url: str
    token: str
    timeout: float = REQUEST_TIMEOUT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Hub:
        token = environ.get("COMFYHUB_TOKEN", "").strip()
        if not token:
            raise RemoteError(NO_TOKEN, EXIT_REFUSED)
        url = (environ.get("COMFYHUB_URL", "").strip() or DEFAULT_URL).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise RemoteError(f"COMFYHUB_URL must start with http:// or https://, not {url!r}", EXIT_REFUSED)
        return cls(url, token)

    def call(self, method: str, path: str, body: Any = None) -> tuple[str, Any]:
        """The reply's (msg, data); raises RemoteError with the server's own words."""
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(request, timeout=self.timeout) as reply:
                envelope = _envelope(reply.read())
        except urllib.error.HTTPError as exc:
            raise self._refusal(exc.code, _envelope(exc.read())) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # refused, DNS, timeout, not HTTP
            why = getattr(exc, "reason", exc)
            raise RemoteError(
                f"cannot reach comfyhub at {self.url} ({why}): is it running? (set COMFYHUB_URL)", EXIT_UNREACHABLE
            ) from None
        if envelope is None:
            raise RemoteError(f"{self.url} did not answer like comfyhub: is COMFYHUB_URL right?", EXIT_UNREACHABLE)
        return str(envelope.get("msg", "")), envelope.get("data")

    def _refusal(self, status: int, envelope: dict | None) -> RemoteError:
        msg = str(envelope.get("msg", "")) if envelope else ""
        if status == 401:
            return RemoteError(BAD_TOKEN.format(msg=f"401 {msg}".strip()), EXIT_REFUSED)
        if 400 <= status < 500:
            return RemoteError(f"{msg or 'refused'} (HTTP {status})", EXIT_REFUSED)
        return RemoteError(f"comfyhub answered HTTP {status}: {msg or 'server error'}", EXIT_UNREACHABLE)


def _envelope(raw: bytes) -> dict | None:
    """comfyhub's `{"code", "msg", "data"}`, or None when the reply is something else."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) and "msg" in value else None


# --- submit ----------------------------------------------------------------------------------


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise RemoteError(f"cannot read the {what} {path}: {exc.strerror or exc}", EXIT_REFUSED) from None
    except UnicodeDecodeError:
        raise RemoteError(f"the {what} {path} is not UTF-8 text", EXIT_REFUSED) from None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(_read_text(path, what))
    except ValueError as exc:
        raise RemoteError(f"the {what} {path} is not valid JSON: {exc}", EXIT_REFUSED) from None


def read_params(path: Path) -> dict[str, Any]:
    """The body's parameter source, by the file's extension: `csv`, `jsonl`, `table` or `grid`."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return {"csv": _read_text(path, "parameters file")}
    if suffix in (".jsonl", ".ndjson"):
        return {"jsonl": _read_text(path, "parameters file")}
    if suffix == ".json":
        value = _read_json(path, "parameters file")
        if isinstance(value, list):
            return {"table": value}
        if isinstance(value, dict) and set(value) == {"grid"}:
            return {"grid": value["grid"]}
        raise RemoteError(f'the parameters file {path} must hold a list of rows or {{"grid": {{...}}}}', EXIT_REFUSED)
    raise RemoteError(f"the parameters file {path} must be .csv, .jsonl or .json", EXIT_REFUSED)


def job_body(args) -> dict[str, Any]:
    """POST /api/projects/{id}/jobs's JSON body from the command's arguments."""
    body: dict[str, Any] = {"workflow": _read_json(args.workflow, "workflow file")}
    if args.name is not None:
        body["name"] = args.name
    if args.params is not None:
        body.update(read_params(args.params))
    if args.repeat is not None:
        body["repeat"] = args.repeat
    if args.seed_field is not None:
        body["seed"] = {"field": args.seed_field, "mode": args.seed_mode or "increment"}
        if args.seed_start is not None:
            body["seed"]["start"] = args.seed_start
    if args.max_retries is not None:
        body["max_retries"] = args.max_retries
    return body


def submit_command(args, environ: Mapping[str, str] = os.environ) -> int:
    out = Console(highlight=False, soft_wrap=True)
    try:
        if args.seed_field is None and (args.seed_mode is not None or args.seed_start is not None):
            raise RemoteError("--seed-mode and --seed-start need --seed-field (e.g. --seed-field 3.seed)", EXIT_REFUSED)
        hub = Hub.from_env(environ)
        body = job_body(args)
        _, data = hub.call("POST", f"/api/projects/{args.project_id}/jobs", body)
    except RemoteError as exc:
        return _fail(exc)
    job_id, total = data["id"], data["total"]
    out.print(f"created job {job_id} in project {args.project_id}: {total} items")
    if not args.watch:
        out.print(f"follow it with: comfyhub jobs watch {job_id}")
        return EXIT_OK
    return _watch(hub, job_id, args.interval, out)


# --- watch -----------------------------------------------------------------------------------


def watch_command(args, environ: Mapping[str, str] = os.environ) -> int:
    try:
        hub = Hub.from_env(environ)
    except RemoteError as exc:
        return _fail(exc)
    return _watch(hub, args.job_id, args.interval, Console(highlight=False, soft_wrap=True))


def exit_code(view: dict) -> int:
    """0 done with every item done, 3 done with some failed, 4 failed or cancelled."""
    if view["state"] == "done":
        return EXIT_ITEMS_FAILED if view["counts"].get("failed") else EXIT_OK
    return EXIT_JOB_FAILED


def _watch(hub: Hub, job_id: int, interval: float, out: Console) -> int:
    """Poll GET /api/jobs/{id} until the job ends; Ctrl-C stops watching, never the job."""
    view: dict | None = None
    shown = _Shown(Console(stderr=True, highlight=False), job_id)
    try:
        while True:
            view = _poll(hub, job_id, view, shown)
            shown.update(view)
            if view["state"] in FINAL_STATES:
                break
            time.sleep(interval)
    except RemoteError as exc:
        shown.stop()
        return _fail(exc)
    except KeyboardInterrupt:
        shown.stop()
        out.print(f"stopped watching job {job_id}; it goes on (comfyhub jobs watch {job_id})")
        return EXIT_INTERRUPTED
    shown.stop()
    out.print(summary(view), markup=False)
    return exit_code(view)


def _poll(hub: Hub, job_id: int, last: dict | None, shown: _Shown) -> dict:
    """The job's view; a server away (restarting) is asked again for UNREACHABLE_GRACE."""
    deadline = None
    while True:
        try:
            return hub.call("GET", f"/api/jobs/{job_id}")[1]
        except RemoteError as exc:
            if exc.exit_code != EXIT_UNREACHABLE or last is None:
                raise
            deadline = deadline or time.monotonic() + UNREACHABLE_GRACE
            if time.monotonic() > deadline:
                raise
            shown.note(f"{exc.message}; retrying")
            time.sleep(2.0)


def summary(view: dict) -> str:
    """The last line: the job's end, its counts and how long it ran."""
    counts = view["counts"]
    parts = [f"{counts.get('done', 0)} done", f"{counts.get('failed', 0)} failed"]
    if counts.get("cancelled"):
        parts.append(f"{counts['cancelled']} cancelled")
    line = f"job {view['id']} {view['state']}: {', '.join(parts)} of {view['total']}"
    took = _seconds_between(view.get("started_at") or view.get("created_at"), view.get("finished_at"))
    if took is not None:
        line += f" in {_duration(took)}"
    if view.get("detail"):
        line += f" ({view['detail']})"
    if counts.get("failed"):
        line += f"\nwhy items failed: GET /api/projects/{view['project_id']}/jobs/{view['id']}/items?state=failed"
    return line


class _Shown:
    """The progress on stderr: a rich bar on a terminal, a line per change elsewhere (logs)."""

    LINE_EVERY = 5.0  # seconds between lines in a log, unless the state changes

    def __init__(self, console: Console, job_id: int):
        self.console, self.job_id = console, job_id
        self.progress: Progress | None = None
        self.task = None
        self.last_line, self.last_at, self.last_state = "", 0.0, None

    def update(self, view: dict) -> None:
        counts = view["counts"]
        settled = counts.get("done", 0) + counts.get("failed", 0) + counts.get("cancelled", 0)
        fields = {
            "state": view["state"] + (f": {view['detail']}" if view.get("detail") else ""),
            "failed": counts.get("failed", 0),
            "rate": f"{view.get('rate_per_minute') or 0:g}/min",
            "eta": _duration(view["eta_seconds"]) if view.get("eta_seconds") is not None else "-",
        }
        if self.console.is_terminal:
            self._bar(view["total"], settled, fields)
        else:
            self._line(view, settled, fields)

    def _bar(self, total: int, settled: int, fields: dict) -> None:
        if self.progress is None:
            self.progress = Progress(
                TextColumn(f"job {self.job_id}"),
                TextColumn("[bold]{task.fields[state]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("failed {task.fields[failed]}"),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA {task.fields[eta]}"),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task("job", total=total, **{**fields, "state": ""})
        self.progress.update(self.task, total=total, completed=settled, **{**fields, "state": escape(fields["state"])})

    def _line(self, view: dict, settled: int, fields: dict) -> None:
        line = (
            f"job {self.job_id} {fields['state']}: {settled}/{view['total']} "
            f"(failed {fields['failed']}), {fields['rate']}, ETA {fields['eta']}"
        )
        now = time.monotonic()
        due = view["state"] != self.last_state or now - self.last_at >= self.LINE_EVERY
        if line != self.last_line and due:
            self.console.print(line, markup=False)
            self.last_line, self.last_at, self.last_state = line, now, view["state"]

    def note(self, text: str) -> None:
        (self.progress.console if self.progress else self.console).print(f"comfyhub: {text}", markup=False)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        return max((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 0.0)
    except ValueError:
        return None


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(seconds, 0):.1f} s"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _fail(exc: RemoteError) -> int:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"comfyhub: {exc.message}", markup=False)
    return exc.exit_code


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as the error it is: following it would send the token to
    wherever it points (urllib keeps the Authorization header across hosts)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)
