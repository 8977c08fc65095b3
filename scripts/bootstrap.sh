# Sourced by the other scripts: make .venv with comfyhub installed (extras in $1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-}"
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
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing comfyhub${extras:+ with [$extras]} into .venv" >&2
  export SSL_CERT_FILE="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" UV_PYTHON_DOWNLOADS=never
  .venv/bin/python -m pip install -q --disable-pip-version-check uv >/dev/null 2>&1 || true
  if [ -x .venv/bin/uv ]; then
    .venv/bin/uv pip install -q --python .venv/bin/python -e ".${extras:+[$extras]}"
  else
    .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
  fi
  touch "$stamp"
fi
