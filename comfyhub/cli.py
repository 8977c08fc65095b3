"""The `comfyhub` command: serve, user create, doctor, services list|stop|events, outputs export,
jobs submit|watch."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import secrets
import sys
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from comfyhub import serving
from comfyhub.auth import hash_password_sync
from comfyhub.config import DEFAULT_PORT, Settings, SettingsError, describe_env_file, load_settings
from comfyhub.db import create_engine, is_sqlite, migrate, session_factory
from comfyhub.models import User


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"comfyhub: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def _with_db(settings: Settings, work):
    engine = create_engine(settings.database_url)
    try:
        async with session_factory(engine)() as db:
            return await work(db)
    finally:
        await engine.dispose()


async def _create_user(db, name: str, password: str, admin: bool) -> User | None:
    if (await db.execute(select(User).where(User.username == name))).scalar_one_or_none():
        return None
    user = User(username=name, password_hash=hash_password_sync(password), is_admin=admin)
    db.add(user)
    await db.commit()
    return user


def ensure_first_admin(settings: Settings) -> str | None:
    """Create the first admin when there is no user; return a generated password to show."""

    async def work(db):
        if await db.scalar(select(func.count()).select_from(User)):
            return None
        password = settings.comfyhub_admin_password or secrets.token_urlsafe(12)
        await _create_user(db, settings.comfyhub_admin_user, password, admin=True)
        return None if settings.comfyhub_admin_password else password

    return asyncio.run(_with_db(settings, work))


def _announce_admin(settings: Settings, password: str) -> None:
    keep = keep_initial_password(settings.runtime_dir, password)
    bar = "=" * 64
    print(
        f"{bar}\n First run: created administrator '{settings.comfyhub_admin_user}'\n"
        f" password: {password}\n (also in {keep}, mode 0600: the password alone; shown only this once)\n{bar}",
        flush=True,
    )


def keep_initial_password(runtime_dir: Path, password: str) -> Path:
    """Write runtime/initial_admin_password: the password alone and a newline, mode 0600.

    Only the password, so that `$(cat runtime/initial_admin_password)` is exactly what the
    login form wants. Written under a temporary name and renamed: a reader never sees a
    half-written file.
    """
    keep = runtime_dir / "initial_admin_password"
    keep.parent.mkdir(parents=True, exist_ok=True)
    partial = keep.with_name(f".{keep.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    os.replace(partial, keep)
    return keep


NOT_CONFIGURED_BANNER = (
    "comfyhub: ComfyUI is not configured (COMFYUI_REPO_PATH / COMFYUI_PYTHON unset): 数据生成 answers "
    "'ComfyUI 未配置'.\n"
    "          To fix: .venv/bin/comfyhub comfyui install   (then restart comfyhub; "
    "or set both in .env to an existing ComfyUI)"
)


def cmd_serve(args) -> int:
    settings = _settings()
    if args.workers > 1 and is_sqlite(settings.database_url):
        print(
            "comfyhub: --workers > 1 needs PostgreSQL (COMFYHUB_DATABASE_URL=postgresql+asyncpg://...); "
            "SQLite serves one worker only",
            file=sys.stderr,
        )
        return 2
    print(f"comfyhub: settings {describe_env_file()}", flush=True)
    print(f"comfyhub: migrating {_safe_url(settings.database_url)}", flush=True)
    migrate(settings.database_url)
    password = ensure_first_admin(settings)
    if password:
        _announce_admin(settings, password)
    if not settings.comfyui_configured:
        print(NOT_CONFIGURED_BANNER, flush=True)
    return serving.serve(settings, args.host, args.port, args.workers, args.log_level)


def cmd_user_create(args) -> int:
    settings = _settings()
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Repeat password: "):
            print("comfyhub: passwords do not match", file=sys.stderr)
            return 1
    if len(password) < 8:
        print("comfyhub: password must have at least 8 characters", file=sys.stderr)
        return 1
    migrate(settings.database_url)
    user = asyncio.run(_with_db(settings, lambda db: _create_user(db, args.name, password, args.admin)))
    if user is None:
        print(f"comfyhub: user '{args.name}' already exists", file=sys.stderr)
        return 1
    print(f"created {'admin' if args.admin else 'user'} '{args.name}' (id {user.id})")
    return 0


def cmd_doctor(args) -> int:
    from comfyhub.doctor import run_checks

    return run_checks()


def _manager_for_cli(settings: Settings):
    """A manager on the deployment's database, without heartbeat: for one command."""
    from comfyhub.services.manager import ServiceManager

    engine = create_engine(settings.database_url)
    return engine, ServiceManager(settings, session_factory(engine))


def cmd_services(args) -> int:
    settings = _settings()

    async def run() -> int:
        from comfyhub.models import ComfyUIService, Project
        from comfyhub.reasons import Reason

        engine, manager = _manager_for_cli(settings)
        try:
            if args.services_command == "list":
                async with manager.sessions() as db:
                    rows = (
                        await db.execute(
                            select(ComfyUIService, Project.code, User.username)
                            .join(Project, Project.id == ComfyUIService.project_id)
                            .join(User, User.id == ComfyUIService.user_id)
                            .where(Project.deleted_at.is_(None))
                            .order_by(ComfyUIService.project_id)
                        )
                    ).all()
                _print_table(_services_table(rows))
                return 0
            if args.services_command == "stop":
                record = await manager.stop(args.project_id, reason=Reason.CLI, actor="cli")
                if record is None:
                    print(f"comfyhub: project {args.project_id} has no instance", file=sys.stderr)
                    return 1
                print(f"stopped the instance of project {args.project_id}")
                return 0
            _print_table(_events_table(reversed(await manager.events(args.limit))))
            return 0
        finally:
            await manager.outputs.wait_idle()  # the scan after a stop: what the last pull missed
            await manager.outputs.close()
            await manager.health.aclose()
            await engine.dispose()

    return asyncio.run(run())


def _table(*columns: str) -> Table:
    """A plain table: a header underline, no borders; columns named '>…' align right."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    for name in columns:
        table.add_column(name.lstrip(">"), justify="right" if name.startswith(">") else "left")
    return table


def _print_table(table: Table) -> None:
    # rich measures each cell by display width, so Chinese names and details keep the
    # columns aligned. In a pipe nothing wraps: lines stay whole for grep and logs.
    width = None if sys.stdout.isatty() else 10_000
    Console(highlight=False, width=width).print(table)


def _time(at) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def _services_table(rows) -> Table:
    table = _table(">project", "code", "user", "status", ">port", ">pid", "gpu", "started")
    for svc, code, username in rows:
        table.add_row(
            str(svc.project_id),
            code,
            username,
            svc.status,
            str(svc.port or "-"),
            str(svc.pid or "-"),
            svc.gpu or "-",
            _time(svc.started_at),
        )
    return table


def _events_table(events) -> Table:
    table = _table("at", "actor", "action", ">project", "outcome", "detail")
    for event in events:
        detail = event.detail.splitlines()[0] if event.detail else ""
        table.add_row(_time(event.at), event.actor, event.action, str(event.project_id or "-"), event.outcome, detail)
    return table


def cmd_comfyui_install(args) -> int:
    from comfyhub.comfyui_install import Installer, InstallError
    from comfyhub.services.gpus import GpuPicker

    settings = _settings()
    torch = args.torch or ("cuda" if GpuPicker("auto").list_gpus() else "cpu")
    extras = args.extra_packages.split() if args.extra_packages else []
    installer = Installer(
        Path(args.dir), args.git_url or settings.comfyui_git_url, args.ref, torch, extras, env_file=Path.cwd() / ".env"
    )
    try:
        installer.run()
    except InstallError as exc:
        print(f"comfyhub: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_outputs_export(args) -> int:
    from comfyhub.outputs import folder_export

    return folder_export.main(_settings(), args)


def cmd_jobs(args) -> int:
    # A client of a running comfyhub's API (COMFYHUB_URL, COMFYHUB_TOKEN): no settings, no database.
    from comfyhub.remote import submit_command, watch_command

    return submit_command(args) if args.jobs_command == "submit" else watch_command(args)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _add_jobs(sub) -> None:
    jobs = sub.add_parser(
        "jobs", help="批量生成 on a running comfyhub (COMFYHUB_URL, default http://127.0.0.1:8000; COMFYHUB_TOKEN)"
    )
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    submit = jobs_sub.add_parser("submit", help="submit a workflow over a table or grid of parameters")
    submit.add_argument("project_id", type=int)
    submit.add_argument("workflow", type=Path, help="the workflow, saved with ComfyUI's Export (API)")
    submit.add_argument(
        "params",
        type=Path,
        nargs="?",
        help='.csv (header: 6.text,3.seed…), .jsonl (an object a line) or .json (a list of rows, or {"grid": {...}})',
    )
    submit.add_argument("--name", help="the job's name (default 批量生成)")
    submit.add_argument("--repeat", type=int, metavar="N", help="run each row N times in a row")
    submit.add_argument("--seed-field", metavar="NODE.INPUT", help="set this input on every item, e.g. 3.seed")
    submit.add_argument("--seed-mode", choices=("random", "increment"), help="default increment")
    submit.add_argument("--seed-start", type=int, metavar="N", help="the first seed in increment mode (default 0)")
    submit.add_argument("--max-retries", type=int, metavar="N", help="tries again of an item ComfyUI fails")
    submit.add_argument("--watch", action="store_true", help="then follow it like `comfyhub jobs watch`")
    submit.add_argument(
        "--interval", type=_positive, default=1.0, help="seconds between polls with --watch (default 1)"
    )
    submit.set_defaults(func=cmd_jobs)
    watch = jobs_sub.add_parser(
        "watch", help="a job's progress until it ends: exit 0 all done, 3 some items failed, 4 failed or cancelled"
    )
    watch.add_argument("job_id", type=int)
    watch.add_argument("--interval", type=_positive, default=1.0, help="seconds between polls (default 1)")
    watch.set_defaults(func=cmd_jobs)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfyhub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="apply migrations, then serve the platform")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=cmd_serve)

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="user_command", required=True)
    create = user.add_parser("create", help="create a user")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true")
    create.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    create.set_defaults(func=cmd_user_create)

    doctor = sub.add_parser("doctor", help="check settings, database, folders and ComfyUI")
    doctor.set_defaults(func=cmd_doctor)

    comfyui = sub.add_parser("comfyui", help="set up ComfyUI itself").add_subparsers(
        dest="comfyui_command", required=True
    )
    install = comfyui.add_parser("install", help="clone (or update) ComfyUI with its own venv and point .env at it")
    install.add_argument("--dir", default="runtime/ComfyUI", help="where the checkout goes (default runtime/ComfyUI)")
    install.add_argument("--ref", help="tag, branch or commit to check out (default: the default branch)")
    install.add_argument(
        "--torch",
        choices=("cpu", "cuda", "skip"),
        help="torch build (default: cuda when an NVIDIA GPU is visible, else cpu); "
        "skip keeps the torch already in the venv (installed by hand)",
    )
    install.add_argument("--git-url", help="repository to clone (default COMFYUI_GIT_URL)")
    install.add_argument(
        "--extra-packages", default="requests", help="packages ComfyUI imports without listing them (default: requests)"
    )
    install.set_defaults(func=cmd_comfyui_install)

    services = sub.add_parser("services", help="instances of a running deployment (same database)")
    services_sub = services.add_subparsers(dest="services_command", required=True)
    services_sub.add_parser("list", help="every instance with owner, status, port, pid").set_defaults(func=cmd_services)
    stop = services_sub.add_parser("stop", help="stop one project's instance (on this machine)")
    stop.add_argument("project_id", type=int)
    stop.set_defaults(func=cmd_services)
    events = services_sub.add_parser("events", help="the audit trail, oldest first")
    events.add_argument("--limit", type=int, default=50)
    events.set_defaults(func=cmd_services)

    outputs = sub.add_parser("outputs", help="a project's generated files (same database and folders)")
    outputs_sub = outputs.add_subparsers(dest="outputs_command", required=True)
    export = outputs_sub.add_parser(
        "export", help="write a project's outputs into a folder as a Hugging Face imagefolder (files + metadata.jsonl)"
    )
    _add_export_arguments(export)
    export.set_defaults(func=cmd_outputs_export)
    _add_jobs(sub)
    return parser


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from comfyhub.outputs.folder_export import add_arguments

    add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
