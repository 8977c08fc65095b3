#!/usr/bin/env bash
# bench/gpu_check.sh — start two real ComfyUI instances through comfyhub on a GPU machine
# and report where they landed.
#
# What it does, in order (every step prints progress; any failure prints the log tails
# and exits non-zero):
#   1. installs the carried wheels ($CARRY/wheels) into $PY, keeping any installed
#      package that is already at least as new (nothing is downloaded);
#   2. unpacks the carried ComfyUI source ($CARRY/comfyui-*.tar.gz) into $WORK;
#   3. writes a .env in a fresh $WORK/hub (SQLite, COMFYUI_GPUS=auto, a stub front end,
#      ports 8200-8210) and starts `python3 -m comfyhub.cli serve` from this checkout;
#   4. logs in, creates two projects and calls open_comfy on both at the same time,
#      timing each call (it returns once the instance is online);
#   5. records, per instance: comfyhub's `gpu` (GET /api/projects/{id}), the process's
#      CUDA_VISIBLE_DEVICES, ComfyUI's /system_stats devices, the process GPU memory
#      (nvidia-smi --query-compute-apps), and nvidia-smi's view of the whole card;
#   6. stops both with stop_comfy and checks that the GPU memory is freed (no compute
#      app of ours left within 15 s), then stops comfyhub.
# Report: $OUT/gpu_report.json and $OUT/gpu_report.md, plus comfyhub's serve log and the
# two instance logs. Re-running is safe: $WORK/hub is recreated each time.
#
# Usage (from the repository root):
#   bash bench/gpu_check.sh
# Knobs (environment):
#   CARRY=.devcarry       wheels/, comfyui-*.tar.gz, frontend/index.html (optional)
#   PY=python3            interpreter for comfyhub (and ComfyUI unless COMFY_PY is set)
#   COMFY_PY=$PY          interpreter for ComfyUI
#   COMFY_SRC=            an existing ComfyUI checkout: skips unpacking the tarball
#   WORK=/tmp/comfyhub-gpu-check   scratch folder
#   OUT=$WORK/out         where the report goes (the device tool sets OUT)
#   HUB_PORT=8000  PORT_RANGE=8200-8210  STARTUP_TIMEOUT=180
#   CPU_ONLY=1            dry run on a machine without a GPU: COMFYUI_GPUS=none (comfyhub
#                         adds --cpu), no nvidia-smi
#   SKIP_INSTALL=1        do not install the wheels
#
# Preparing $CARRY (on a machine with network; it is git-ignored through .git/info/exclude):
#   - comfyui-<version>.tar.gz: a ComfyUI checkout packed without venv/, user/, output/*,
#     tests*, .git and __pycache__ (about 4 MiB);
#   - wheels/: cp312 manylinux x86_64 wheels, one version each, fetched with
#     `pip download --only-binary=:all: --python-version 3.12 --implementation cp --no-deps
#      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
#      --platform manylinux_2_28_x86_64 -d wheels NAME==VERSION` for what the target python
#     lacks: comfyhub's fastapi, starlette, uvicorn, httptools, websockets, sqlalchemy,
#     greenlet, alembic, mako, aiosqlite, pydantic, pydantic-core, pydantic-settings,
#     python-dotenv, annotated-types, typing-inspection, typing-extensions,
#     opentelemetry-api (fastapi needs it), argon2-cffi, argon2-cffi-bindings, cffi,
#     pycparser; ComfyUI's av, kornia, kornia-rs, spandrel, torchsde, trampoline (about
#     56 MiB, av alone 35);
#   - frontend/index.html (optional): a stub page; comfyui-frontend-package is too big.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARRY=$(cd "$REPO" && realpath -m "${CARRY:-.devcarry}")
PY=${PY:-python3}
PY=$(command -v "$PY")
COMFY_PY=${COMFY_PY:-$PY}
WORK=${WORK:-/tmp/comfyhub-gpu-check}
OUT=${OUT:-$WORK/out}
HUB_PORT=${HUB_PORT:-8000}
PORT_RANGE=${PORT_RANGE:-8200-8210}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-180}
CPU_ONLY=${CPU_ONLY:-0}
SKIP_INSTALL=${SKIP_INSTALL:-0}
HUB_DIR=$WORK/hub
HUB_LOG=$HUB_DIR/comfyhub_serve.log
ADMIN_USER=gpucheck
ADMIN_PASSWORD=gpucheck-password-123
BASE=http://127.0.0.1:$HUB_PORT
HUB_PID=
T0=$(date +%s)

log() { printf '[gpu_check +%3ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

copy_logs() {
    mkdir -p "$OUT"
    [[ -f $HUB_LOG ]] && cp "$HUB_LOG" "$OUT/" || true
    local f
    for f in "$HUB_DIR"/runtime/comfy_logs/*.log; do [[ -f $f ]] && cp "$f" "$OUT/"; done
    return 0
}

stop_everything() {
    # Instances first (comfyhub also stops them on exit: COMFYUI_STOP_INSTANCES_ON_EXIT),
    # then comfyhub. Only processes this script started, by pid.
    local pid
    if [[ -f $WORK/instance_pids ]]; then
        while read -r pid; do
            [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && kill -TERM -- "-$pid" 2>/dev/null || true
        done <"$WORK/instance_pids"
    fi
    if [[ -n $HUB_PID ]] && kill -0 "$HUB_PID" 2>/dev/null; then
        kill -INT "$HUB_PID" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$HUB_PID" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$HUB_PID" 2>/dev/null && kill -KILL "$HUB_PID" 2>/dev/null || true
    fi
    HUB_PID=
}

on_error() {
    local rc=$? line=$1
    trap - ERR
    log "FAILED (exit $rc) at line $line"
    if [[ -f $HUB_LOG ]]; then echo "---- comfyhub serve log (tail) ----"; tail -n 40 "$HUB_LOG"; fi
    local f
    for f in "$HUB_DIR"/runtime/comfy_logs/*.log; do
        [[ -f $f ]] || continue
        echo "---- $(basename "$f") (tail) ----"; tail -n 40 "$f"
    done
    stop_everything
    copy_logs
    exit "$rc"
}
trap 'on_error $LINENO' ERR
trap 'stop_everything' EXIT

mkdir -p "$WORK" "$OUT"
log "repo $REPO; carry $CARRY; python $PY ($("$PY" --version 2>&1)); ComfyUI python $COMFY_PY; out $OUT"

# ---- 1. wheels -------------------------------------------------------------------------
if [[ $SKIP_INSTALL != 1 ]]; then
    shopt -s nullglob
    wheels=("$CARRY"/wheels/*.whl)
    shopt -u nullglob
    ((${#wheels[@]})) || { log "no wheels in $CARRY/wheels"; false; }
    # One requirement per wheel, "name>=version": an installed package at least as new is kept.
    reqs=()
    for w in "${wheels[@]}"; do
        b=$(basename "$w"); reqs+=("${b%%-*}>=$(cut -d- -f2 <<<"$b")")
    done
    log "installing ${#reqs[@]} carried wheels (no index)"
    pip_args=(-m pip install --no-index --find-links "$CARRY/wheels" --no-cache-dir --no-compile
              --disable-pip-version-check)
    if ! "$PY" "${pip_args[@]}" "${reqs[@]}" >"$WORK/pip_install.log" 2>&1; then
        # A dependency that is neither installed nor carried: install without resolving and
        # let the import checks below say whether it matters.
        log "resolving install failed; tail:"; tail -n 15 "$WORK/pip_install.log"
        log "retrying with --no-deps"
        "$PY" "${pip_args[@]}" --no-deps "${reqs[@]}" >>"$WORK/pip_install.log" 2>&1 \
            || { tail -n 30 "$WORK/pip_install.log"; false; }
    fi
    grep -E '^Successfully installed' "$WORK/pip_install.log" || log "nothing new installed"
    "$PY" -m pip check --disable-pip-version-check 2>&1 | head -n 20 || true
fi

log "import check (comfyhub side)"
PYTHONPATH=$REPO "$PY" -c '
import fastapi, uvicorn, sqlalchemy.ext.asyncio, greenlet, aiosqlite, alembic, argon2, pydantic_settings, httpx, psutil
import comfyhub.app, comfyhub.cli
print("comfyhub imports ok; fastapi", fastapi.__version__)'
log "import check (ComfyUI side)"
"$COMFY_PY" -c '
import torch, torchvision, av, kornia, spandrel, torchsde, sqlalchemy, alembic, pydantic_settings, aiohttp
print("ComfyUI imports ok; torch", torch.__version__, "cuda available:", torch.cuda.is_available(),
      "devices:", torch.cuda.device_count())'

# ---- 2. ComfyUI source -------------------------------------------------------------------
if [[ -n ${COMFY_SRC:-} ]]; then
    COMFY_REPO=$(realpath "$COMFY_SRC")
    log "using the ComfyUI checkout at $COMFY_REPO"
else
    tarball=$(ls "$CARRY"/comfyui-*.tar.gz 2>/dev/null | head -n 1 || true)
    [[ -n $tarball ]] || { log "no $CARRY/comfyui-*.tar.gz"; false; }
    rm -rf "$WORK/src"; mkdir -p "$WORK/src"
    tar -xzf "$tarball" -C "$WORK/src"
    COMFY_REPO=$WORK/src/ComfyUI
    log "unpacked $(basename "$tarball") into $COMFY_REPO"
fi
[[ -f $COMFY_REPO/main.py ]] || { log "no main.py in $COMFY_REPO"; false; }
mkdir -p "$COMFY_REPO/custom_nodes" "$COMFY_REPO/models"

FRONTEND=$CARRY/frontend
if [[ ! -f $FRONTEND/index.html ]]; then
    FRONTEND=$WORK/frontend; mkdir -p "$FRONTEND"
    echo '<!doctype html><title>stub front end</title><p>comfyhub GPU check: stub front end.</p>' \
        >"$FRONTEND/index.html"
fi

# ---- 3. comfyhub -------------------------------------------------------------------------
if [[ $CPU_ONLY == 1 ]]; then GPUS=none; else GPUS=auto; fi
rm -rf "$HUB_DIR"; mkdir -p "$HUB_DIR"
rm -f "$WORK/instance_pids"
cat >"$HUB_DIR/.env" <<EOF
COMFYUI_REPO_PATH=$COMFY_REPO
COMFYUI_PYTHON=$COMFY_PY
COMFYUI_GPUS=$GPUS
COMFYUI_EXTRA_ARGS="--front-end-root $(printf '%q' "$FRONTEND")"
COMFYUI_PORT_RANGE=$PORT_RANGE
COMFYUI_STARTUP_TIMEOUT_SECONDS=$STARTUP_TIMEOUT
COMFYUI_STOP_INSTANCES_ON_EXIT=true
COMFYHUB_ADMIN_USER=$ADMIN_USER
COMFYHUB_ADMIN_PASSWORD=$ADMIN_PASSWORD
EOF
log ".env written:"; sed 's/^COMFYHUB_ADMIN_PASSWORD=.*/COMFYHUB_ADMIN_PASSWORD=***/' "$HUB_DIR/.env"

if "$PY" -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $HUB_PORT)) != 0)"; then
    log "port $HUB_PORT is already taken"; false
fi
log "starting comfyhub serve on port $HUB_PORT"
(cd "$HUB_DIR" && PYTHONPATH=$REPO PYTHONUNBUFFERED=1 exec "$PY" -m comfyhub.cli serve --port "$HUB_PORT") \
    >"$HUB_LOG" 2>&1 &
HUB_PID=$!
for i in $(seq 1 120); do
    if "$PY" -c "import sys, urllib.request as u; sys.exit(u.urlopen('$BASE/healthz', timeout=2).status != 200)" \
        >/dev/null 2>&1; then break; fi
    kill -0 "$HUB_PID" 2>/dev/null || { log "comfyhub exited during start-up"; false; }
    ((i < 120)) || { log "comfyhub not healthy after 60 s"; false; }
    sleep 0.5
done
log "comfyhub is healthy (pid $HUB_PID)"
log "comfyhub doctor:"
(cd "$HUB_DIR" && PYTHONPATH=$REPO "$PY" -m comfyhub.cli doctor 2>&1) || log "doctor reported a failure (see above)"

# ---- 4-6. the check itself ------------------------------------------------------------------
log "running the two-instance check"
"$PY" - "$BASE" "$ADMIN_USER" "$ADMIN_PASSWORD" "$OUT" "$CPU_ONLY" "$WORK/instance_pids" "$COMFY_REPO" <<'PYEOF'
import concurrent.futures as cf
import datetime as dt
import json
import os
import subprocess
import sys
import time

import httpx

base, user, password, out, cpu_only, pid_file, comfy_repo = sys.argv[1:8]
cpu_only = cpu_only == "1"
T0 = time.monotonic()


def log(msg):
    print(f"[gpu_check drive +{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def smi(*args):
    """nvidia-smi output, or None on a CPU run / when it fails."""
    if cpu_only:
        return None
    try:
        return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=30).stdout
    except Exception as exc:  # noqa: BLE001
        return f"nvidia-smi failed: {exc}"


def compute_apps():
    text = smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits")
    apps = {}
    for line in (text or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            apps[int(parts[0])] = int(parts[1]) if parts[1].isdigit() else parts[1]
    return apps


def gpu_memory():
    text = smi("--query-gpu=index,name,memory.used,memory.total", "--format=csv,noheader,nounits")
    return [dict(zip(("index", "name", "used_mib", "total_mib"), (p.strip() for p in line.split(","))))
            for line in (text or "").splitlines() if line.strip()]


def proc_env(pid, key):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                k, _, v = item.partition(b"=")
                if k.decode() == key:
                    return v.decode()
        return "(unset)"
    except OSError as exc:
        return f"(unreadable: {exc.strerror})"


client = httpx.Client(base_url=base, timeout=httpx.Timeout(30.0, read=400.0))
r = client.post("/api/auth/login", json={"username": user, "password": password})
r.raise_for_status()
client.headers["Authorization"] = "Bearer " + r.json()["data"]["token"]
log("logged in")

stamp = time.strftime("%H%M%S")
projects = []
for n in (1, 2):
    r = client.post("/api/projects", json={"name": f"GPU check {n}", "code": f"GPU-{stamp}-{n}", "note": "gpu_check.sh"})
    r.raise_for_status()
    projects.append(r.json()["data"]["id"])
log(f"projects {projects}")

report = {
    "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    "host": os.uname().nodename,
    "cpu_only": cpu_only,
    "comfyui_repo": comfy_repo,
    "nvidia_smi_before": smi(),
    "instances": [],
}


def open_one(pid_):
    t = time.monotonic()
    try:
        r = client.post(f"/api/projects/{pid_}/open_comfy")
        return pid_, time.monotonic() - t, r.status_code, r.json()
    except Exception as exc:  # noqa: BLE001 — report it with the others
        return pid_, time.monotonic() - t, 0, {"msg": f"request failed: {exc!r}"}


def running(pid_):
    try:
        with open(f"/proc/{pid_}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


log("open_comfy on both projects at once")
with cf.ThreadPoolExecutor(2) as pool:
    opened = list(pool.map(open_one, projects))

failed = False
for project_id, seconds, code, body in opened:
    log(f"project {project_id}: open_comfy -> HTTP {code} in {seconds:.1f} s: {body.get('msg')}")
    svc = client.get(f"/api/projects/{project_id}").json()["data"].get("service") or {}
    inst = {
        "project_id": project_id,
        "open_comfy_http": code,
        "open_comfy_msg": body.get("msg"),
        "seconds_to_online": round(seconds, 2),
        "service": svc,
        "gpu_recorded": svc.get("gpu"),
    }
    if svc.get("pid"):
        with open(pid_file, "a") as f:
            f.write(f"{svc['pid']}\n")
    if code != 200 or svc.get("status") != "online":
        failed = True
        tail = client.get(f"/api/projects/{project_id}/comfy_log", params={"tail": 60}).json()["data"]["lines"]
        inst["log_tail"] = tail
        print("\n".join(tail[-40:]), flush=True)
    else:
        inst["cuda_visible_devices"] = proc_env(svc["pid"], "CUDA_VISIBLE_DEVICES")
        stats = httpx.get(f"http://127.0.0.1:{svc['port']}/system_stats", timeout=10).json()
        inst["system_stats"] = stats
        inst["devices"] = stats.get("devices")
        inst["argv"] = stats.get("system", {}).get("argv")
        # Through the hand-off to the instance origin (303, code, its cookie), as a browser goes.
        proxied = client.get(f"/comfy/{project_id}/system_stats", follow_redirects=True)
        inst["proxy_system_stats_http"] = proxied.status_code
    report["instances"].append(inst)

apps = compute_apps()
report["compute_apps_online"] = {str(k): v for k, v in apps.items()}
report["gpu_memory_online"] = gpu_memory()
report["nvidia_smi_online"] = smi()
for inst in report["instances"]:
    pid_ = inst["service"].get("pid")
    inst["process_gpu_memory_mib"] = apps.get(pid_) if pid_ else None
    log(f"project {inst['project_id']}: gpu={inst['gpu_recorded']!r} "
        f"CUDA_VISIBLE_DEVICES={inst.get('cuda_visible_devices')!r} pid={pid_} "
        f"gpu_mem={inst['process_gpu_memory_mib']} MiB devices={json.dumps(inst.get('devices'))}")
if not cpu_only:
    print(report["nvidia_smi_online"] or "", flush=True)

log("stop_comfy on both")
def stop_one(pid_):
    t = time.monotonic()
    r = client.post(f"/api/projects/{pid_}/stop_comfy")
    return pid_, time.monotonic() - t, r.status_code, (r.json().get("data") or {}).get("status")

with cf.ThreadPoolExecutor(2) as pool:
    stopped = list(pool.map(stop_one, projects))
report["stops"] = [{"project_id": p, "seconds": round(s, 2), "http": c, "status": st} for p, s, c, st in stopped]
for p, s, c, st in stopped:
    log(f"project {p}: stop_comfy -> HTTP {c} status={st} in {s:.1f} s")

ours = {inst["service"].get("pid") for inst in report["instances"] if inst["service"].get("pid")}
t = time.monotonic()
left = {}
while True:
    apps = compute_apps()
    left = {p: m for p, m in apps.items() if p in ours}
    alive = [p for p in ours if running(p)]
    if not left and not alive:
        break
    if time.monotonic() - t > 15:
        break
    time.sleep(0.5)
report["after_stop"] = {
    "seconds_until_freed": round(time.monotonic() - t, 2),
    "our_compute_apps_left": {str(k): v for k, v in left.items()},
    "all_compute_apps": {str(k): v for k, v in apps.items()},
    "processes_alive": alive,
    "gpu_memory": gpu_memory(),
    "nvidia_smi": smi(),
}
freed = not left and not alive
log(f"after stop: freed={freed} in {report['after_stop']['seconds_until_freed']} s; "
    f"compute apps left {report['after_stop']['all_compute_apps']}; gpu memory {report['after_stop']['gpu_memory']}")
report["freed_after_stop"] = freed
report["ok"] = not failed and freed and all(s["http"] == 200 for s in report["stops"])

with open(os.path.join(out, "gpu_report.json"), "w") as f:
    json.dump(report, f, indent=2, ensure_ascii=False)

# Markdown summary
def mib(v):
    return "-" if v is None else f"{v / 2**20:,.0f} MiB"

lines = [f"# comfyhub GPU check — {report['date']}", "",
         f"host `{report['host']}`, cpu_only={cpu_only}, ok={report['ok']}", "",
         "| project | comfyhub gpu | CUDA_VISIBLE_DEVICES | device (system_stats) | type | vram total | vram free | torch vram total / free | process GPU mem | open_comfy → online |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for inst in report["instances"]:
    for d in inst.get("devices") or [{}]:
        lines.append(
            f"| {inst['project_id']} | `{inst['gpu_recorded']}` | `{inst.get('cuda_visible_devices')}` | {d.get('name', '-')} "
            f"| {d.get('type', '-')} | {mib(d.get('vram_total'))} | {mib(d.get('vram_free'))} "
            f"| {mib(d.get('torch_vram_total'))} / {mib(d.get('torch_vram_free'))} "
            f"| {inst.get('process_gpu_memory_mib') or '-'} MiB | {inst['seconds_to_online']} s (HTTP {inst['open_comfy_http']}) |")
lines += ["", "stops: " + ", ".join(f"project {s['project_id']} HTTP {s['http']} {s['status']} in {s['seconds']} s" for s in report["stops"]),
          "", f"after stop: freed={freed} within {report['after_stop']['seconds_until_freed']} s; "
          f"compute apps {report['after_stop']['all_compute_apps']}; GPU memory {report['after_stop']['gpu_memory']}", ""]
for key in ("nvidia_smi_before", "nvidia_smi_online"):
    if report.get(key):
        lines += [f"## {key}", "", "```", report[key].rstrip(), "```", ""]
if report["after_stop"]["nvidia_smi"]:
    lines += ["## nvidia_smi_after_stop", "", "```", report["after_stop"]["nvidia_smi"].rstrip(), "```", ""]
with open(os.path.join(out, "gpu_report.md"), "w") as f:
    f.write("\n".join(lines))
print("\n".join(lines[:8 + 2 * len(report["instances"])]), flush=True)
sys.exit(0 if report["ok"] else 3)
PYEOF

log "stopping comfyhub"
stop_everything
copy_logs
log "done: report in $OUT/gpu_report.md and $OUT/gpu_report.json"
