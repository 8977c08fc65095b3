"""All of comfyhub's settings, declared once: name, default and meaning.

Settings come from the environment and from `.env` in the working directory. Relative
paths are resolved against the working directory when the settings are loaded, so every
later use sees an absolute path. `python -m comfyhub.config --markdown` prints the table
README.md shows; `--readme README.md` rewrites it there.
"""

from __future__ import annotations

import os
import secrets
import shlex
import time
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

RUNTIME_DIR = Path("runtime")
# Read from the working directory: the repository root under ./scripts/serve.sh, which
# changes there first (scripts/bootstrap.sh), or wherever `comfyhub` is started otherwise.
ENV_FILE = ".env"


class SettingsError(Exception):
    """Invalid configuration; the message is one line per offending setting."""


def shown(default: str) -> dict[str, str]:
    """The default as the README states it, for a setting whose real default is computed."""
    return {"shown_default": default}


DEFAULT_PORT = 8000  # `comfyhub serve --port`'s default


def _check_origin_template(value: str) -> None:
    """`scheme://host[:port]`, nothing after it; `{project}` at most once, in the host."""
    parts = urlsplit(value.replace("{project}", "project"))
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment:
        raise ValueError("must look like http://127.0.0.1:8001 or https://p{project}.comfy.example.com")
    host = value.split("//", 1)[1].split(":")[0]
    if value.count("{project}") > 1 or ("{project}" in value and "{project}" not in host):
        raise ValueError("{project} may appear once, in the host")


def _parse_port_range(value: str) -> tuple[int, int]:
    try:
        low_s, high_s = value.split("-", 1)
        low, high = int(low_s), int(high_s)
    except ValueError:
        raise ValueError("must look like 8200-8299") from None
    if not (1 <= low <= high <= 65535):
        raise ValueError("must be LOW-HIGH with 1 <= LOW <= HIGH <= 65535")
    return low, high


class Settings(BaseSettings):
    """comfyhub configuration. Field names are the environment variable names, lowercased.

    Each setting is declared once, here: its type, default, limits and meaning. The
    settings table in README.md is generated from these declarations, in this order
    (`python -m comfyhub.config --readme README.md`; tests/test_readme.py checks it).
    """

    model_config = SettingsConfigDict(env_file=ENV_FILE, extra="ignore", case_sensitive=False)

    # --- ComfyUI and its instances --------------------------------------------------------
    comfyui_repo_path: Path | None = Field(
        None, description="ComfyUI checkout (holds `main.py`); required to start instances"
    )
    comfyui_python: Path | None = Field(
        None, description="Python interpreter that runs ComfyUI; required to start instances"
    )
    comfyui_git_url: str = Field(
        "https://github.com/comfyanonymous/ComfyUI",
        description="what `comfyhub comfyui install` clones (any git URL or local path)",
        json_schema_extra=shown("the official ComfyUI repository"),
    )
    comfyui_port_range: str = Field("8200-8299", description="ports handed to instances, inclusive")
    comfyui_listen: str = Field(
        "127.0.0.1", description="address instances listen on; keep loopback, the proxy is the way in"
    )
    comfyui_startup_timeout_seconds: float = Field(
        240, gt=0, description="a start not healthy by then is killed and marked failed"
    )
    comfyui_heartbeat_interval_seconds: float = Field(30, gt=0, description="seconds between health sweeps")
    comfyui_health_timeout_seconds: float = Field(2.5, gt=0, description="timeout of one `GET /system_stats`")
    comfyui_heartbeat_prober_min_instances: int = Field(
        100,
        ge=0,
        description="a sweep of at least this many instances makes its HTTP checks in a helper process, "
        "off the event loop that serves users (0: always; below it they cost the loop little)",
    )
    comfyui_stop_grace_seconds: float = Field(
        10,
        gt=0,
        # launchers/process.py stop_steps: SIGINT, grace; SIGTERM, grace / 2; SIGKILL, grace / 2.
        description="stop waits this long after SIGINT before SIGTERM (and half as long again before SIGKILL)",
    )
    comfyui_instance_base_dir: Path = Field(
        Path("runtime/comfy_instances"), description="per-instance folders `u{user}/p{project}`"
    )
    comfyui_log_dir: Path = Field(Path("runtime/comfy_logs"), description="logs `comfy_u{user}_p{project}_{port}.log`")
    comfyui_custom_nodes_dir: Path | None = Field(
        None,
        description="shared custom nodes, linked into each instance",
        json_schema_extra=shown("`COMFYUI_REPO_PATH/custom_nodes`"),
    )
    comfyui_models_dir: Path | None = Field(
        None,
        description="shared models, linked into each instance",
        json_schema_extra=shown("`COMFYUI_REPO_PATH/models`"),
    )
    comfyui_extra_args: str = Field("", description="extra ComfyUI arguments, shell-quoted (e.g. `--cpu`)")
    # Shared-box defaults (README "Defaults for a shared GPU box"): a forgotten tab gives its
    # GPU memory back within hours, and one user cannot take every port and GPU.
    comfyui_idle_timeout_seconds: float = Field(
        2 * 3600,
        ge=0,
        description="stop instances with no proxied traffic and an empty ComfyUI queue for this long "
        "(`stopped`, 空闲超时; files kept); 0 = never",
    )
    comfyui_max_instances: int = Field(
        0, ge=0, description="live instances in all; over it `open_comfy` answers 429 (0 = no limit)"
    )
    comfyui_max_instances_per_user: int = Field(
        2,
        ge=0,
        description="live instances per user; over it `open_comfy` answers 429 asking to stop another one "
        "first (0 = no limit)",
    )
    comfyui_max_concurrent_starts: int = Field(
        2, ge=1, description="starts running at once per backend process; the others wait and show 排队中"
    )
    # One warm instance by default: the first open of a project on a fresh `comfyhub
    # serve` answers in about a second instead of a whole ComfyUI start (10–20 s), for
    # the price of one idle ComfyUI (~0.5 GB of RAM, or of VRAM on a GPU). More only
    # pays where many people open projects at once; 0 turns the pool off.
    comfyui_warm_pool_size: int = Field(
        1,
        ge=0,
        description="ComfyUIs kept started and healthy for no one, each taken by the next project opened "
        "(~0.5 GB of RAM or VRAM each); users' starts and COMFYUI_MAX_INSTANCES come first (0 = no pool)",
    )
    comfyui_auto_restart: bool = Field(
        False, description="restart instances that died (not those stopped by a user or the culler)"
    )
    comfyui_restart_backoff_seconds: float = Field(
        2, gt=0, description="delay before the first automatic restart, doubling with each further one"
    )
    comfyui_restart_max_failures: int = Field(
        5, ge=1, description="automatic restarts within the window before giving up (`failed`, reason shown)"
    )
    comfyui_restart_window_seconds: float = Field(600, gt=0, description="the window automatic restarts are counted in")
    comfyui_launcher: Literal["local", "ray"] = Field(
        "local",
        description="`local`: subprocesses of the backend on this machine. `ray`: one Ray actor per instance "
        "on a cluster of GPU nodes ([docs/cluster.md](docs/cluster.md))",
    )
    ray_address: str = Field("auto", description="the Ray cluster to join with `COMFYUI_LAUNCHER=ray`")
    comfyui_gpus_per_instance: float = Field(
        1,
        ge=0,
        description="GPUs each instance asks Ray for (fractions share a GPU, `0` = CPU with `--cpu`); Ray only",
    )
    comfyui_gpus: str = Field(
        "auto",
        description="`auto`: GPUs through NVML, each start on the GPU with the most free memory (2 GiB counted "
        "per instance already there); CPU with `--cpu` when none is found. `none`: always `--cpu`. `0,1`: "
        "those GPUs, fewest instances first. The choice is `CUDA_VISIBLE_DEVICES` of the instance, recorded "
        "and shown",
    )
    comfyui_stop_instances_on_exit: bool = Field(
        False, description="stop all instances when the backend exits (default: keep them running)"
    )

    # --- the platform itself ------------------------------------------------------------
    comfyhub_database_url: str = Field(
        "",
        description="`sqlite+aiosqlite:///…` or `postgresql+asyncpg://user:pw@host/db`",
        json_schema_extra=shown("SQLite at `runtime/comfyhub.db`"),
    )
    comfyhub_secret_key: str = Field(
        "",
        description="key for session-token digests; set it explicitly when several hosts share a database",
        json_schema_extra=shown("generated into `runtime/secret_key` (0600)"),
    )
    comfyhub_admin_user: str = Field("admin", description="first administrator, created when there is no user")
    comfyhub_admin_password: str = Field(
        "", description="its password", json_schema_extra=shown("generated, printed once")
    )
    comfyhub_session_hours: float = Field(24 * 7, gt=0, description="lifetime of a login")
    comfyhub_login_max_failures: int = Field(
        5, ge=1, description="failed logins per user name and client address before a lock-out"
    )
    comfyhub_login_lockout_seconds: float = Field(
        300, gt=0, description="lock-out length, and the window failures are counted in"
    )
    comfyhub_trusted_origins: str = Field(
        "",
        description="extra origins (comma separated, e.g. `https://hub.example.com`) allowed for "
        "cookie-authenticated writes (behind a reverse proxy that rewrites `Host`); a login from an "
        "https one gets a `Secure` session cookie",
    )
    comfyhub_forwarded_allow_ips: str = Field(
        "127.0.0.1,::1",
        description="reverse proxies (comma separated addresses, `*` = any, empty = none) whose "
        "`X-Forwarded-Proto` / `X-Forwarded-For` are believed: behind TLS the session cookie then "
        "carries `Secure`, and logins are throttled per real client address",
    )
    comfyhub_instance_origin: str = Field(
        "",
        description="where browsers reach ComfyUI: an origin of its own, so scripts in ComfyUI's pages "
        "(custom nodes) can never use comfyhub's API with the user's login. `http://HOST:PORT` (one origin "
        "for all projects, e.g. a second port) or `{project}` in the host for one origin per project "
        "(`https://p{project}.comfy.example.com`, wildcard DNS). Set it behind a reverse proxy "
        "([docs/operations.md](docs/operations.md))",
        json_schema_extra=shown("the host the browser used for comfyhub, on `COMFYHUB_INSTANCE_PORT`"),
    )
    comfyhub_instance_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="second port `comfyhub serve` listens on (same `--host`): what arrives there is the "
        "instance origin (ComfyUI only), whatever its `Host`; a reverse proxy sends the instance origin "
        "here. 0 = `--port` + 1",
        json_schema_extra=shown("`--port` + 1"),
    )
    comfyhub_list_refresh_seconds: float = Field(
        8, gt=0, description="how often the workbench refreshes the project list"
    )

    # --- generated data ---------------------------------------------------------------
    comfyhub_history_sync_seconds: float = Field(
        2,
        gt=0,
        description="how often an instance in use is asked for prompts it finished (its `/history`); "
        "new outputs show in the gallery this long after ComfyUI wrote them",
    )
    comfyhub_history_idle_sync_seconds: float = Field(
        30,
        gt=0,
        description="the same for an instance nobody used in the last 10 minutes (a job or a script "
        "may still be queueing prompts); every stop, cull and restart also syncs first",
    )
    comfyhub_trash_days: float = Field(
        30, ge=0, description="days a deleted output stays in its instance's `.trash/` folder before it is removed"
    )
    comfyhub_job_queue_depth: int = Field(
        2,
        ge=1,
        le=64,
        description="job items of one project kept in its ComfyUI's queue at a time: 2 keeps ComfyUI busy "
        "between items, and a prompt the user queues by hand waits behind at most one of them",
    )
    comfyhub_job_max_retries: int = Field(
        2, ge=0, le=20, description="times a job item that fails in ComfyUI is tried again before it counts as failed"
    )
    comfyhub_thumbnail_dir: Path = Field(
        RUNTIME_DIR / "thumbnails", description="cache of the gallery's thumbnails (safe to delete)"
    )

    # --- validation -------------------------------------------------------------------
    @field_validator(
        "comfyui_repo_path", "comfyui_python", "comfyui_custom_nodes_dir", "comfyui_models_dir", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value):
        # `COMFYUI_PYTHON=` in .env means "not set", not "the current directory".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("comfyui_port_range")
    @classmethod
    def _check_port_range(cls, value: str) -> str:
        _parse_port_range(value)
        return value

    @field_validator("comfyui_extra_args")
    @classmethod
    def _check_extra_args(cls, value: str) -> str:
        shlex.split(value)
        return value

    @field_validator("comfyui_gpus")
    @classmethod
    def _check_gpus(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "none", ""):
            return value or "none"
        parts = [p.strip() for p in value.split(",")]
        if not all(p.isdigit() for p in parts):
            raise ValueError("must be auto, none or GPU ids like 0,1")
        return ",".join(parts)

    @field_validator("comfyhub_database_url")
    @classmethod
    def _check_db_url(cls, value: str) -> str:
        if value and not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @field_validator("comfyhub_instance_origin")
    @classmethod
    def _check_instance_origin(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value:
            _check_origin_template(value)
        return value

    @model_validator(mode="after")
    def _absolute_paths(self) -> Settings:
        # Resolve once so that a later chdir (or a child's cwd) cannot change meanings.
        for name in (
            "comfyui_repo_path",
            "comfyui_python",
            "comfyui_instance_base_dir",
            "comfyui_log_dir",
            "comfyui_custom_nodes_dir",
            "comfyui_models_dir",
            "comfyhub_thumbnail_dir",
        ):
            value = getattr(self, name)
            if value is not None and not value.is_absolute():
                object.__setattr__(self, name, Path.cwd() / value)
        return self

    # --- derived values ---------------------------------------------------------------
    @property
    def port_range(self) -> tuple[int, int]:
        return _parse_port_range(self.comfyui_port_range)

    @property
    def extra_args(self) -> list[str]:
        return shlex.split(self.comfyui_extra_args)

    @property
    def runtime_dir(self) -> Path:
        return Path.cwd() / RUNTIME_DIR

    @property
    def database_url(self) -> str:
        if self.comfyhub_database_url:
            return self.comfyhub_database_url
        return f"sqlite+aiosqlite:///{self.runtime_dir / 'comfyhub.db'}"

    def instance_dir(self, user_id: int, project_id: int) -> Path:
        """A project's instance folder: ComfyUI's --base-directory, holding output/ and input/."""
        return self.comfyui_instance_base_dir / f"u{user_id}" / f"p{project_id}"

    @property
    def comfyui_configured(self) -> bool:
        return self.comfyui_repo_path is not None and self.comfyui_python is not None

    @property
    def trusted_origins(self) -> set[str]:
        return {o.strip().rstrip("/") for o in self.comfyhub_trusted_origins.split(",") if o.strip()}

    @property
    def instance_port(self) -> int:
        """The instance origin's listening port (`comfyhub serve` sets the derived one)."""
        return self.comfyhub_instance_port or DEFAULT_PORT + 1

    def secret_key(self) -> str:
        """The configured key, or the one kept in runtime/secret_key (created on first use)."""
        if self.comfyhub_secret_key:
            return self.comfyhub_secret_key
        return _kept_secret(self.runtime_dir / "secret_key")


def _kept_secret(path: Path) -> str:
    """Read the generated key, creating it atomically (0600) if this is the first run.

    O_EXCL makes concurrent first starts (several workers) agree on one key.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):
            key = path.read_text().strip()
            if key:
                return key
            time.sleep(0.01)  # another process created the file and is writing it
        raise SettingsError(f"COMFYHUB_SECRET_KEY: {path} is empty; delete it or set the variable") from None
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def env_file_in_use() -> Path | None:
    """The `.env` that settings are read from (absolute), or None when there is none."""
    path = Path.cwd() / ENV_FILE
    return path if path.is_file() else None


def describe_env_file() -> str:
    """Where settings are read from, in words, for `comfyhub serve` and `comfyhub doctor`."""
    path = env_file_in_use()
    if path is None:
        return f"read from the environment and the defaults (no .env in {Path.cwd()})"
    return f"read from {path} and the environment (the environment wins)"


def load_settings(**overrides) -> Settings:
    """Build Settings, turning pydantic's report into one clear line per bad setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err["loc"] else "settings"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"invalid setting {name}: {msg} (got {err.get('input')!r})")
        raise SettingsError("\n".join(lines)) from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()


# --- the README's settings table -----------------------------------------------------------

README_START = (
    "<!-- settings table: generated from comfyhub/config.py by `python -m comfyhub.config --readme README.md` -->"
)
README_END = "<!-- end of settings table -->"


def _shown_default(field) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "shown_default" in extra:
        return str(extra["shown_default"])
    value = field.default
    if value is None:
        return "—"
    if value == "":
        return "empty"
    if isinstance(value, bool):  # before numbers: a bool is an int
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def markdown_table() -> str:
    """The settings as a Markdown table (setting | default | meaning), in declaration order."""
    rows = ["| setting | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        cells = (f"`{name.upper()}`", _shown_default(field), field.description or "")
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def readme_with_table(text: str) -> str:
    """`text` (a README) with the part between the markers replaced by the current table."""
    head, start, rest = text.partition(README_START)
    _, end, tail = rest.partition(README_END)
    if not start or not end:
        raise ValueError(f"the README lacks the markers {README_START!r} … {README_END!r}")
    # Blank lines around the table: Markdown then never reads a marker as part of it.
    return f"{head}{README_START}\n\n{markdown_table()}\n{README_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m comfyhub.config", description="comfyhub's settings")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--markdown", action="store_true", help="print the settings table (Markdown)")
    what.add_argument("--readme", type=Path, metavar="PATH", help="rewrite the settings table in this README")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table(), end="")
    else:
        try:
            text = readme_with_table(args.readme.read_text())
        except (OSError, ValueError) as exc:
            parser.error(str(exc))
        args.readme.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
