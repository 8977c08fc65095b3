#!/usr/bin/env bash
# Run the whole test suite (args go to pytest), then the lifecycle suites again with every
# instance on a local Ray cluster. Installs PostgreSQL and Chromium first when they are
# missing and this runs as root; otherwise says what to install.
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
set +e
.venv/bin/python -m pytest "$@"
status=$?
if [ "${COMFYHUB_TEST_RAY_PASS:-1}" != 0 ]; then
  echo "==> lifecycle, fault and multi-worker suites again, instances on a local Ray cluster" >&2
  .venv/bin/python -m pytest --launcher ray "$@" \
    tests/services/test_manager.py tests/services/test_restart.py \
    tests/services/test_multiworker.py tests/services/test_database_outage.py
  ray_status=$?
  [ $status = 0 ] && status=$ray_status
fi
exit $status
