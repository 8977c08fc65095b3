"""`comfyhub doctor`: each check prints ok/warn/fail with the reason and, on failure, the fix."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from comfyhub.config import Settings, SettingsError, describe_env_file, load_settings
from comfyhub.net.ports import port_is_free


@dataclass
class Check:
    name: str
    state: str  # "ok" | "warn" | "fail"
    detail: str
    fix: str = ""


def check_database(settings: Settings) -> Check:
    from sqlalchemy.engine import make_url

    from comfyhub.db import create_engine, current_revision, head_revision, is_sqlite

    if is_sqlite(settings.database_url):
        path = Path(make_url(settings.database_url).database or "")
        if not path.exists():
            # Connecting would create an empty file; say what to do instead.
            return Check(
                "database",
                "fail",
                f"{path} does not exist yet",
                "run `.venv/bin/comfyhub serve` once (it creates and migrates it)",
            )

    async def probe():
        engine = create_engine(settings.database_url)
        try:
            return await asyncio.wait_for(current_revision(engine), 10)
        finally:
            await engine.dispose()

    try:
        revision = asyncio.run(probe())
    except Exception as exc:  # noqa: BLE001 — report any failure to connect
        return Check(
            "database",
            "fail",
            f"cannot connect: {type(exc).__name__}: {exc}"[:300],
            "check COMFYHUB_DATABASE_URL and that the server is running",
        )
    head = head_revision()
    if revision != head:
        return Check(
            "database",
            "fail",
            f"schema at {revision or 'empty'}, code expects {head}",
            "run `.venv/bin/comfyhub serve` once (it migrates)",
        )
    return Check("database", "ok", f"reachable, schema at {revision} (the latest)")


def check_writable_dir(name: str, path: Path) -> Check:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".doctor-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return Check(name, "fail", f"{path} not writable: {exc.strerror}", f"make {path} writable for this user")
    return Check(name, "ok", f"{path} writable")


def check_comfyui(settings: Settings) -> list[Check]:
    if not settings.comfyui_configured:
        return [
            Check(
                "comfyui",
                "fail",
                "COMFYUI_REPO_PATH / COMFYUI_PYTHON not set",
                "run `.venv/bin/comfyhub comfyui install` (or set both in .env to a ComfyUI checkout and its python)",
            )
        ]
    checks = []
    main_py = settings.comfyui_repo_path / "main.py"
    if main_py.is_file():
        checks.append(Check("comfyui repo", "ok", f"{main_py} exists"))
    else:
        checks.append(
            Check(
                "comfyui repo",
                "fail",
                f"{main_py} not found",
                "point COMFYUI_REPO_PATH at a ComfyUI checkout, or run `.venv/bin/comfyhub comfyui install`",
            )
        )
    python = settings.comfyui_python
    if python.is_file() and os.access(python, os.X_OK):
        checks.append(Check("comfyui python", "ok", f"{python} is executable"))
        checks.append(check_torch(python))
    else:
        checks.append(
            Check(
                "comfyui python",
                "fail",
                f"{python} is not an executable file",
                "point COMFYUI_PYTHON at the python of ComfyUI's venv",
            )
        )
    return checks


TORCH_TIMEOUT = 60


def check_torch(python: Path) -> Check:
    """Its python runs and imports torch and torchvision (ComfyUI imports both at start), in a time limit.

    torchvision matters on its own: a build that does not match torch imports torch fine
    and then stops ComfyUI with `operator torchvision::nms does not exist`.
    """
    code = "import torch, torchvision; print(torch.__version__, torch.cuda.is_available())"
    try:
        r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=TORCH_TIMEOUT)
    except subprocess.TimeoutExpired:
        return Check(
            "comfyui torch",
            "fail",
            f"importing torch took over {TORCH_TIMEOUT} s",
            "check the venv (a broken CUDA setup can hang the import)",
        )
    except OSError as exc:
        return Check(
            "comfyui torch",
            "fail",
            f"cannot run {python}: {exc.strerror}",
            "reinstall: .venv/bin/comfyhub comfyui install",
        )
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return Check(
            "comfyui torch",
            "fail",
            f"import torch, torchvision failed: {last[:200]}",
            "install matching builds: .venv/bin/comfyhub comfyui install (or pip install torch torchvision "
            "in that venv, from the same index)",
        )
    version, cuda = (r.stdout.split() + ["?", "?"])[:2]
    return Check("comfyui torch", "ok", f"torch {version}, CUDA available: {cuda}")


def check_gpus(settings: Settings) -> Check:
    if settings.comfyui_gpus == "none":
        return Check("gpus", "ok", "COMFYUI_GPUS=none: instances run on the CPU (--cpu)")
    from comfyhub.services.gpus import GpuPicker

    picker = GpuPicker("auto")
    found = picker.list_gpus()
    if settings.comfyui_gpus == "auto":
        if found:
            names = ", ".join(f"{g.id}: {g.name} ({g.memory_free >> 30} GiB free)" for g in found)
            return Check("gpus", "ok", f"NVML sees {names}")
        # The one place a CLI run says why NVML found nothing (the picker itself stays quiet).
        why = f"NVML unavailable ({picker.nvml_error})" if picker.nvml_error else "NVML sees no GPU"
        return Check(
            "gpus",
            "warn",
            f"{why}: instances run on the CPU (--cpu)",
            "install the NVIDIA driver, or set COMFYUI_GPUS=none to silence this",
        )
    wanted = settings.comfyui_gpus.split(",")
    missing = [g for g in wanted if g not in {x.id for x in found}]
    if missing:
        return Check(
            "gpus",
            "fail",
            f"COMFYUI_GPUS names {','.join(missing)}, NVML sees {','.join(x.id for x in found) or 'no GPU'}",
            "fix COMFYUI_GPUS or the driver",
        )
    return Check("gpus", "ok", f"GPUs {settings.comfyui_gpus} visible")


def check_listen(settings: Settings) -> Check:
    try:
        loopback = ipaddress.ip_address(settings.comfyui_listen).is_loopback
    except ValueError:
        loopback = settings.comfyui_listen == "localhost"
    if loopback:
        return Check("listen address", "ok", f"{settings.comfyui_listen} is loopback")
    return Check(
        "listen address",
        "warn",
        f"{settings.comfyui_listen} is not loopback: instances are reachable without login",
        "set COMFYUI_LISTEN=127.0.0.1 unless a firewall closes the port range",
    )


def check_ports(settings: Settings) -> Check:
    low, high = settings.port_range
    free = sum(1 for p in range(low, high + 1) if _port_free(settings.comfyui_listen, p))
    if free == 0:
        return Check(
            "port range", "fail", f"no free port in {low}-{high}", "free some ports or widen COMFYUI_PORT_RANGE"
        )
    return Check("port range", "ok", f"{free} of {high - low + 1} ports free in {low}-{high}")


def _port_free(host: str, port: int) -> bool:
    try:
        return port_is_free(host, port)
    except OSError:
        return False  # an address this machine cannot bind at all: none of its ports is usable


RAY_TIMEOUT = 90


def check_ray(settings: Settings) -> list[Check]:
    """The cluster answers, has GPUs enough for one instance, and shares the instance folders."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return [
            Check(
                "ray",
                "fail",
                "COMFYUI_LAUNCHER=ray but Ray is not installed",
                "pip install 'comfyhub[ray]' here and on every node",
            )
        ]
    markers = []
    try:
        for folder in (settings.comfyui_instance_base_dir, settings.comfyui_log_dir):
            folder.mkdir(parents=True, exist_ok=True)
            marker = folder / f".doctor-shared-{os.getpid()}"
            marker.write_text("comfyhub doctor")
            markers.append(marker)
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "comfyhub.launchers.ray_check",
                settings.ray_address,
                *map(str, markers),
                *(str(p) for p in (settings.comfyui_repo_path, settings.comfyui_python) if p is not None),
            ],
            capture_output=True,
            text=True,
            timeout=RAY_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        r = None
    except OSError as exc:
        return [Check("ray cluster", "fail", f"cannot check: {exc.strerror}", "see the instance and log dir checks")]
    finally:
        for marker in markers:
            marker.unlink(missing_ok=True)
    fix = (
        "start the cluster (`ray start --head` on one machine, `ray start --address=HEAD:6379` on each GPU node) "
        "and set RAY_ADDRESS to it"
    )
    if r is None:
        return [
            Check("ray cluster", "fail", f"no answer from RAY_ADDRESS={settings.ray_address} in {RAY_TIMEOUT} s", fix)
        ]
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return [Check("ray cluster", "fail", f"cannot join RAY_ADDRESS={settings.ray_address}: {last[:200]}", fix)]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    nodes = report["nodes"]
    need = settings.comfyui_gpus_per_instance
    largest = max((n["gpus"] for n in nodes), default=0)
    checks = [
        Check(
            "ray cluster",
            "ok",
            f"{len(nodes)} nodes, {sum(n['gpus'] for n in nodes):g} GPUs: "
            + ", ".join(f"{n['ip']} ({n['gpus']:g} GPU)" for n in nodes),
        )
    ]
    if need > largest:
        checks.append(
            Check(
                "ray gpus",
                "fail",
                f"COMFYUI_GPUS_PER_INSTANCE={need:g} but no node has more than {largest:g} GPUs",
                "lower COMFYUI_GPUS_PER_INSTANCE or add bigger GPU nodes",
            )
        )
    else:
        checks.append(Check("ray gpus", "ok", f"{need:g} GPU per instance fits on a node"))
    marker_names = {str(m) for m in markers}
    unshared = [
        f"{n['ip']}: " + ", ".join(os.path.dirname(p) if p in marker_names else p for p in n["missing"])
        for n in report["shared"]
        if n["missing"]
    ]
    if unshared:
        checks.append(
            Check(
                "shared folders",
                "fail",
                "nodes missing what instances need: " + "; ".join(unshared),
                "put COMFYUI_INSTANCE_BASE_DIR, COMFYUI_LOG_DIR and the models on a filesystem mounted at "
                "the same path on every node (NFS, CephFS...), and install ComfyUI at the same path there",
            )
        )
    else:
        checks.append(
            Check("shared folders", "ok", "every node sees the instance and log folders, ComfyUI and its python")
        )
    low, high = settings.port_range
    checks.append(
        Check(
            "node ports",
            "warn",
            f"ComfyUI listens on each node's address, ports {low}-{high}, with no login of its own",
            f"let only the comfyhub host reach ports {low}-{high} on the nodes (firewall / security group)",
        )
    )
    return checks


def collect(settings: Settings) -> list[Check]:
    checks = [check_database(settings)]
    checks.append(check_writable_dir("instance dir", settings.comfyui_instance_base_dir))
    checks.append(check_writable_dir("log dir", settings.comfyui_log_dir))
    checks.extend(check_comfyui(settings))
    if settings.comfyui_launcher == "ray":
        # Instances run on the nodes: listen address, ports and GPUs are theirs, not this host's.
        checks.extend(check_ray(settings))
        return checks
    checks.append(check_listen(settings))
    checks.append(check_ports(settings))
    checks.append(check_gpus(settings))
    return checks


def run_checks() -> int:
    # Which .env was read, right in the first line: one in another folder explains many surprises.
    source = describe_env_file()
    try:
        settings = load_settings()
    except SettingsError as exc:
        problems = str(exc).replace("\n", "; ")
        checks = [
            Check("settings", "fail", f"{problems}; {source}", "fix the named setting in .env or the environment")
        ]
    else:
        checks = [Check("settings", "ok", f"all valid, {source}"), *collect(settings)]
    for c in checks:
        line = f"{c.state:<4}  {c.name}: {c.detail}"
        if c.fix and c.state != "ok":
            line += f"\n      fix: {c.fix}"
        print(line)
    print("\n" + summary(checks))
    sys.stdout.flush()
    return 1 if any(c.state == "fail" for c in checks) else 0


def summary(checks: list[Check]) -> str:
    """`9 ok, 1 warning, 0 failed`: a warning is not a pass, so it is counted on its own."""
    ok, warn, fail = (sum(c.state == state for c in checks) for state in ("ok", "warn", "fail"))
    line = f"{ok} ok, {warn} warning{'' if warn == 1 else 's'}, {fail} failed"
    return line + (", see the fixes above" if warn or fail else "")
