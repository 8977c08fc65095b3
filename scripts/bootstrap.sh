# Sourced by the other scripts: make .venv with comfyhub installed (extras in $1), exactly
# the versions pinned in uv.lock. Upgrading a dependency: docs/development.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-}"
# The uv that installs from the lock (it lands in .venv/bin/uv); newer lock formats need a newer uv.
UV_REQUIREMENT="uv>=0.13.9,<0.14"
if ! command -v python3 >/dev/null; then
  echo "comfyhub needs python3 (3.11 or newer): apt-get install -y python3 python3-venv" >&2; exit 1
fi
python3 - <<'PY' || { echo "comfyhub needs Python 3.11 or newer" >&2; exit 1; }
import sys; sys.exit(sys.version_info < (3, 11))
PY
stamp=".venv/.installed${extras:+-$extras}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv" >&2
  python3 -m venv .venv || { echo "python3 -m venv failed: apt-get install -y python3-venv" >&2; exit 1; }
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ uv.lock -nt "$stamp" ]; then
  echo "==> installing comfyhub${extras:+ with [$extras]} into .venv from uv.lock" >&2
  export SSL_CERT_FILE="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" UV_PYTHON_DOWNLOADS=never
  if ! .venv/bin/uv --version >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q --disable-pip-version-check "$UV_REQUIREMENT" || {
      echo "comfyhub: could not install uv into .venv with pip (it installs the pinned dependencies):" \
           "check the network or PIP_INDEX_URL, then run this again" >&2; exit 1; }
  fi
  # Checked offline against the lock's own record of pyproject's requirements: a changed
  # dependency list with an old lock must not install something nobody tested.
  if ! check=$(UV_OFFLINE=1 .venv/bin/uv lock --check 2>&1); then
    echo "$check" | sed 's/^/    uv: /' >&2
    echo "comfyhub: uv.lock does not match the dependencies in pyproject.toml." >&2
    echo "          Run: .venv/bin/uv lock   (then the tests, and commit uv.lock; see docs/development.md)" >&2
    exit 1
  fi
  # --inexact: keep what the lock does not name (uv itself, the other command's extras).
  # VIRTUAL_ENV unset: an activated venv elsewhere must not redirect the install.
  env -u VIRTUAL_ENV UV_PROJECT_ENVIRONMENT=.venv \
    .venv/bin/uv sync -q --frozen --inexact ${extras:+--extra "$extras"}
  touch "$stamp"
fi
