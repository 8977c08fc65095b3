"""All of comfyhub's settings, declared once: name, default and meaning.

Settings come from the environment and from `.env` in the working directory. The
seed's names (COMFYUI_*) keep their meaning and defaults. Relative paths are resolved
against the working directory when the settings are loaded, so every later use sees
an absolute path.
"""

from __future__ import annotations

import os
import secrets
import shlex
import time
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

RUNTIME_DIR = Path("runtime")


class SettingsError(Exception):
    """Invalid configuration; the message is one line per offending setting."""


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
    """comfyhub configuration. Field names are the environment variable names, lowercased."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # --- the seed's settings -------------------------------------------------------
    comfyui_repo_path: Path | None = Field(
        None, description="ComfyUI checkout (holds main.py). Required to start instances."
    )
    comfyui_git_url: str = Field(
        "https://github.com/comfyanonymous/ComfyUI",
        description="Where `comfyhub comfyui install` clones ComfyUI from (any git URL or local path).",
    )
    comfyui_python: Path | None = Field(
        None, description="Python interpreter that runs ComfyUI. Required to start instances."
    )
    comfyui_port_range: str = Field(
        "8200-8299", description="Ports handed to instances, inclusive, LOW-HIGH."
    )
    comfyui_listen: str = Field(
        "127.0.0.1", description="Address instances listen on. Keep loopback: the proxy is the way in."
    )
    comfyui_startup_timeout_seconds: float = Field(
        240, gt=0, description="A start that is not healthy by then is killed and marked failed."
    )
    comfyui_heartbeat_interval_seconds: float = Field(
        30, gt=0, description="Seconds between health sweeps over all instances."
    )
    comfyui_instance_base_dir: Path = Field(
        Path("runtime/comfy_instances"), description="Per-instance folders u{user}/p{project} live here."
    )
    comfyui_log_dir: Path = Field(
        Path("runtime/comfy_logs"), description="Instance logs comfy_u{user}_p{project}_{port}.log."
    )

    # --- comfyhub's own ---------------------------------------------------------------
    comfyhub_database_url: str = Field(
        "", description="SQLAlchemy async URL; empty means SQLite at runtime/comfyhub.db."
    )
    comfyhub_secret_key: str = Field(
        "", description="Key for session-token digests; generated into runtime/secret_key when empty."
    )
    comfyhub_admin_user: str = Field(
        "admin", description="Name of the first admin, created by `serve` when there is no user."
    )
    comfyhub_admin_password: str = Field(
        "", description="Password of the first admin; generated and printed once when empty."
    )
    comfyhub_session_hours: float = Field(
        24 * 7, gt=0, description="Lifetime of a login session (cookie and bearer token)."
    )
    comfyhub_trusted_origins: str = Field(
        "",
        description="Extra origins (comma separated, e.g. https://hub.example.com) allowed to send "
        "cookie-authenticated writes, for deployments behind a reverse proxy that rewrites Host.",
    )
    comfyhub_login_max_failures: int = Field(
        5, ge=1, description="Failed logins per user name and client address before a lock-out."
    )
    comfyhub_login_lockout_seconds: float = Field(
        300, gt=0, description="How long a lock-out lasts; also the window failures are counted in."
    )
    comfyui_stop_grace_seconds: float = Field(
        10, gt=0, description="Stop waits this long after SIGINT before SIGTERM (and as long again before SIGKILL)."
    )
    comfyui_health_timeout_seconds: float = Field(
        2.5, gt=0, description="Timeout of one GET /system_stats health check."
    )
    comfyui_extra_args: str = Field(
        "", description="Extra ComfyUI arguments, shell-quoted (e.g. --cpu)."
    )
    comfyui_custom_nodes_dir: Path | None = Field(
        None, description="Shared custom_nodes linked into each instance; default COMFYUI_REPO_PATH/custom_nodes."
    )
    comfyui_models_dir: Path | None = Field(
        None, description="Shared models linked into each instance; default COMFYUI_REPO_PATH/models."
    )
    comfyui_idle_timeout_seconds: float = Field(
        0, ge=0, description="Stop instances idle this long (0 = never)."
    )
    comfyui_max_instances: int = Field(0, ge=0, description="Live instances in all (0 = no limit).")
    comfyui_max_instances_per_user: int = Field(
        0, ge=0, description="Live instances per user (0 = no limit)."
    )
    comfyui_max_concurrent_starts: int = Field(
        2, ge=1, description="Starts running at once per backend process; more wait their turn (排队中)."
    )
    comfyui_auto_restart: bool = Field(
        False, description="Restart instances that died (not stopped by a user or the culler)."
    )
    comfyui_restart_max_failures: int = Field(
        5, ge=1, description="Automatic restarts allowed within COMFYUI_RESTART_WINDOW_SECONDS before giving up."
    )
    comfyui_restart_window_seconds: float = Field(
        600, gt=0, description="Window in which automatic restarts are counted."
    )
    comfyui_restart_backoff_seconds: float = Field(
        2, gt=0, description="Delay before the first automatic restart; doubles with each further one."
    )
    comfyui_launcher: Literal["local", "ray"] = Field(
        "local", description="How instances run: local subprocesses, or Ray actors on a cluster (docs/cluster.md)."
    )
    ray_address: str = Field(
        "auto", description="Ray cluster to join with COMFYUI_LAUNCHER=ray (ray://host:10001, host:6379 or auto)."
    )
    comfyui_gpus_per_instance: float = Field(
        1, ge=0, description="GPUs each instance asks Ray for (fractions share a GPU; 0 = CPU only). Ray only."
    )
    comfyui_gpus: str = Field("auto", description="auto (NVML; CPU when none found) | none (CPU) | GPU ids like 0,1.")
    comfyui_stop_instances_on_exit: bool = Field(
        False, description="Stop every instance when the backend shuts down (default: keep them running)."
    )
    comfyhub_list_refresh_seconds: float = Field(
        8, gt=0, description="How often the workbench page refreshes the project list."
    )

    # --- validation -------------------------------------------------------------------
    @field_validator("comfyui_repo_path", "comfyui_python", "comfyui_custom_nodes_dir", "comfyui_models_dir",
                     mode="before")
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

    @model_validator(mode="after")
    def _absolute_paths(self) -> "Settings":
        # Resolve once so that a later chdir (or a child's cwd) cannot change meanings.
        for name in (
            "comfyui_repo_path",
            "comfyui_python",
            "comfyui_instance_base_dir",
            "comfyui_log_dir",
            "comfyui_custom_nodes_dir",
            "comfyui_models_dir",
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

    @property
    def comfyui_configured(self) -> bool:
        return self.comfyui_repo_path is not None and self.comfyui_python is not None

    @property
    def trusted_origins(self) -> set[str]:
        return {o.strip().rstrip("/") for o in self.comfyhub_trusted_origins.split(",") if o.strip()}

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
        raise SettingsError(f"COMFYHUB_SECRET_KEY: {path} is empty; delete it or set the variable")
    key = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


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
