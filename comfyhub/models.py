"""Database tables. The schema itself is owned by the Alembic migrations in migrations/."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class ServiceStatus(StrEnum):
    """Lifecycle states of a project's ComfyUI instance (docs/architecture.md, "Lifecycle")."""

    STARTING = "starting"
    ONLINE = "online"
    OFFLINE = "offline"
    FAILED = "failed"
    STOPPED = "stopped"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuthSession(Base):
    """A login: the cookie and the bearer token are the same random token.

    Only an HMAC digest of the token is stored, so a database dump alone cannot log in.
    Logging out deletes the row, which revokes both.
    """

    __tablename__ = "auth_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_digest: Mapped[str] = mapped_column(String(128), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class EntryCode(Base):
    """A one-time code that lets a browser into the instance origin (proxy hand-off).

    The main origin makes one per redirect to ComfyUI; the instance origin trades it,
    once, for its own cookie. Only the code's HMAC is stored. Bound to the login session
    (so to its user) and to one project; gone with the session (logout) or the project.
    """

    __tablename__ = "entry_codes"

    code_digest: Mapped[str] = mapped_column(String(128), primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class ApiToken(Base):
    """A personal access token: a user's long-lived bearer token for scripts.

    Like a session, only an HMAC digest of the token is stored; `prefix` (its first few
    characters, not enough to guess it) lets the owner recognise it in a list. Revoking
    deletes the row. `last_used_at` is written at most once a minute per token.
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    token_digest: Mapped[str] = mapped_column(String(128), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class LoginThrottle(Base):
    """Failed-login counter per (user name, client address), shared by all workers."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    code: Mapped[str] = mapped_column(String(64), unique=True)
    note: Mapped[str] = mapped_column(Text, default="")
    owner_user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Deleting a project hides it but keeps its generation records and files: an admin
    # can still list, export or restore it. Its code is freed (`code` becomes a
    # tombstone) and kept in `deleted_code` for a restore.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deleted_code: Mapped[str] = mapped_column(String(64), default="")


class ComfyUIService(Base):
    """The record of one project's ComfyUI instance (table `comfyui_services`).

    Only services/records.py writes these rows. `launcher_state` is what the launcher
    needs to find the process again after a backend restart, including the identity
    (pid, creation time, command line) checked before any signal is sent. `reason` is
    the code of the last stop, failure or loss (comfyhub.reasons.Reason); `stopped_reason` and
    `last_error` hold the words shown to people.

    A row without a project (`project_id` and `user_id` NULL) is a warm instance of the
    pool (services/pool.py): started, healthy and belonging to no one until an open
    claims it. It lives in this table so that the live-port index below covers it too:
    a port belongs to at most one live instance, warm or not, whatever process wrote it.
    """

    __tablename__ = "comfyui_services"
    __table_args__ = (
        # A port belongs to at most one live instance (invariant 3), across backend processes.
        Index(
            "uq_comfyui_services_live_port",
            "port",
            unique=True,
            sqlite_where=text("status IN ('starting', 'online')"),
            postgresql_where=text("status IN ('starting', 'online')"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # NULL for a warm instance of the pool (no one's yet).
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True, nullable=True)
    project_id: Mapped[int | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), unique=True, nullable=True
    )
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=ServiceStatus.STOPPED)
    status_detail: Mapped[str] = mapped_column(String(255), default="")
    comfy_url: Mapped[str] = mapped_column(String(512), default="")
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    base_dir: Mapped[str] = mapped_column(String(1024), default="")
    log_path: Mapped[str] = mapped_column(String(1024), default="")
    launcher: Mapped[str] = mapped_column(String(32), default="local")
    launcher_state: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    gpu: Mapped[str] = mapped_column(String(64), default="")
    # The column keeps the table's original name; everything in comfyhub calls it started_at.
    started_at: Mapped[datetime | None] = mapped_column("start_time", UTCDateTime, nullable=True)
    last_heartbeat: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_activity: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    stopped_reason: Mapped[str] = mapped_column(String(64), default="")
    reason: Mapped[str] = mapped_column(String(32), default="")
    # Automatic restarts (COMFYUI_AUTO_RESTART): how many in the current window, and when next.
    restart_attempts: Mapped[int] = mapped_column(Integer, default=0)
    restart_window_start: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_restart_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Bumped at every start: a start that finishes late sees it moved on and gives up.
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Lease(Base):
    """A named lease: which backend process runs a singleton job (the heartbeat) until when."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255), default="")
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Event(Base):
    """Audit trail: who started, stopped, culled or restarted what, when, and how it ended."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64), default="system")
    action: Mapped[str] = mapped_column(String(32))
    project_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    outcome: Mapped[str] = mapped_column(String(32), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class Generation(Base):
    """One prompt a project's ComfyUI finished (success or error), kept after ComfyUI forgets it.

    `source` says where the record came from: `history` (ComfyUI's /history, the whole
    truth) or `file` (an output file's own metadata, when the history was lost: a crash,
    files from before comfyhub kept records). A later history entry for the same files
    takes them over. Only comfyhub/outputs/store.py writes these rows.
    """

    __tablename__ = "generations"
    __table_args__ = (Index("uq_generations_prompt", "project_id", "prompt_id", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    user_id: Mapped[int] = mapped_column(Integer)
    prompt_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # None for `file`
    number: Mapped[float | None] = mapped_column(Float, nullable=True)  # ComfyUI's queue number
    status: Mapped[str] = mapped_column(String(16))  # success | error | interrupted
    source: Mapped[str] = mapped_column(String(8), default="history")
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    graph: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the API-format prompt
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Output(Base):
    """One file a generation wrote into its instance's output/ folder, and its curation.

    The file stays where ComfyUI wrote it; `subfolder`/`filename` are relative to the
    instance's output/ and are checked again on every read (outputs/files.py). The
    generation's parameters (prompt, seed, …) are copied here, read from its graph, so
    that the gallery filters and the export need no second pass over the graphs.
    A deleted output keeps its row (`deleted_at`, `trash_path`) so no sync brings it back.
    """

    __tablename__ = "outputs"
    __table_args__ = (
        # One live row per file; deleted rows (in the trash) keep their names but not the key,
        # so ComfyUI reusing a deleted file's name makes a new output.
        Index(
            "uq_outputs_file",
            "project_id",
            "type",
            "subfolder",
            "filename",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
        # The gallery's order: newest first, within one project.
        Index("ix_outputs_project_created", "project_id", "created_at", "id"),
        # The gallery itself (what is not in the trash): its pages and its count read only this.
        Index(
            "ix_outputs_project_live",
            "project_id",
            "created_at",
            "id",
            "deleted_at",
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    user_id: Mapped[int] = mapped_column(Integer)
    generation_id: Mapped[int] = mapped_column(ForeignKey("generations.id"), index=True)
    node_id: Mapped[str] = mapped_column(String(64), default="")
    filename: Mapped[str] = mapped_column(String(255))
    subfolder: Mapped[str] = mapped_column(String(512), default="")
    type: Mapped[str] = mapped_column(String(16), default="output")
    media_type: Mapped[str] = mapped_column(String(16), default="other")  # image | video | audio | other
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    prompt: Mapped[str] = mapped_column(Text, default="")
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    seed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cfg: Mapped[float | None] = mapped_column(Float, nullable=True)
    sampler: Mapped[str] = mapped_column(String(64), default="")
    scheduler: Mapped[str] = mapped_column(String(64), default="")
    model: Mapped[str] = mapped_column(String(255), default="")
    mark: Mapped[str | None] = mapped_column(String(8), nullable=True)  # pass | fail
    # A JSON list of strings, kept as text so one LIKE filters it on every database.
    tags: Mapped[str] = mapped_column(Text, default="[]")
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    trash_path: Mapped[str] = mapped_column(String(1024), default="")


class JobState(StrEnum):
    """A batch job's state. `queued` until its first item is submitted."""

    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ItemState(StrEnum):
    PENDING = "pending"  # not in ComfyUI (yet, or again after a crash or a retry)
    RUNNING = "running"  # submitted under `prompt_id`; ComfyUI has it or is about to
    DONE = "done"
    FAILED = "failed"  # ComfyUI's error, after the retries
    CANCELLED = "cancelled"


class Job(Base):
    """A workflow run over a table of parameters (批量生成), item by item, by comfyhub.

    `workflow` is the API-format graph; each item's `params` replace its `NODE_ID.input`
    values. Only comfyhub/jobs/ writes these rows.
    """

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    user_id: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    workflow: Mapped[dict] = mapped_column(JSON)
    columns: Mapped[list] = mapped_column(JSON)  # the parameter names, in the table's order
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    total: Mapped[int] = mapped_column(Integer)
    max_retries: Mapped[int] = mapped_column(Integer, default=2)
    detail: Mapped[str] = mapped_column(String(255), default="")  # why paused or failed, in words
    # When the job was created or last resumed: a stop of its instance after this pauses it.
    resumed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class JobItem(Base):
    """One set of parameters of a job, and what became of it.

    Each submission gets a fresh `prompt_id`, written here *before* ComfyUI is asked, so
    after any crash comfyhub can ask ComfyUI (history, queue) whether it has it.
    `run` is the instance's generation at submission: a different run means the
    instance that had the item is gone.
    """

    __tablename__ = "job_items"
    __table_args__ = (
        Index("uq_job_items_idx", "job_id", "idx", unique=True),
        Index("ix_job_items_state", "job_id", "state", "idx"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    idx: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=ItemState.PENDING)
    prompt_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    run: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    submissions: Mapped[int] = mapped_column(Integer, default=0)
    retries: Mapped[int] = mapped_column(Integer, default=0)  # after ComfyUI errors
    resubmits: Mapped[int] = mapped_column(Integer, default=0)  # after its instance was lost
    submitted_by: Mapped[str] = mapped_column(String(255), default="")
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
