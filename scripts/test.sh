#!/usr/bin/env bash
# Run the whole test suite (args go to pytest) and, beside it, the lifecycle suites again
# with every instance on a local Ray cluster. Installs PostgreSQL and Chromium first when
# they are missing and this runs as root; otherwise says what to install.
source "$(dirname "$0")/bootstrap.sh" "test"
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -n "$(fc-list :lang=zh 2>/dev/null)" ] || need+=(fonts-wqy-zenhei)  # CJK: else Chinese renders as boxes in Chromium
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> installing ${need[*]} (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # The Debian package starts a cluster of its own; the tests start their own servers.
    service postgresql stop >/dev/null 2>&1 || true
  else
    echo "the tests need: ${need[*]} — run: sudo apt-get install -y ${need[*]}" >&2; exit 1
  fi
fi
# Compile every module once, up front: the suite starts hundreds of Python processes
# (servers, fake ComfyUIs, CLI runs, Ray workers), and where PYTHONDONTWRITEBYTECODE is set
# (or the install did not compile) each one would compile all it imports again, which
# costs more CPU than the tests themselves. A no-op when nothing changed.
.venv/bin/python -m compileall -q -j 0 .venv/lib/python3*/site-packages comfyhub tests >/dev/null 2>&1 || true
set +e
# Both passes at once, the main one over two workers (pytest-xdist): most of the suite
# waits on processes it started (servers, ComfyUIs, a browser, Ray actors), not on the
# CPU. Each test file runs whole in one worker, so a module's shared fixture (a live hub,
# a Chromium) starts once. COMFYHUB_TEST_WORKERS=0 runs the main pass in one process.
workers="${COMFYHUB_TEST_WORKERS:-2}"
xdist=()
[ "$workers" != 0 ] && xdist=(-n "$workers" --dist loadfile)
ray_log=""
if [ "${COMFYHUB_TEST_RAY_PASS:-1}" != 0 ]; then
  # Its output waits in a file so that each pass's report reads whole. `trap - INT` undoes
  # the SIGINT-ignore that bash gives background jobs: Ctrl-C stops (and cleans up) both.
  ray_log="$(mktemp -t comfyhub-ray-pass.XXXXXX)"
  (trap - INT; exec .venv/bin/python -m pytest --launcher ray "$@" \
    tests/services/test_manager.py tests/services/test_restart.py \
    tests/services/test_multiworker.py tests/services/test_database_outage.py \
    tests/services/test_pool.py) >"$ray_log" 2>&1 &
  ray_pid=$!
fi
.venv/bin/python -m pytest "${xdist[@]}" "$@"
status=$?
if [ -n "$ray_log" ]; then
  wait "$ray_pid"
  ray_status=$?
  echo "==> lifecycle, fault and multi-worker suites again, instances on a local Ray cluster" >&2
  cat "$ray_log"
  rm -f "$ray_log"
  [ $status = 0 ] && status=$ray_status
fi
exit $status
