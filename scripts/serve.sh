#!/usr/bin/env bash
# Run the platform: SQLite at runtime/comfyhub.db, http://127.0.0.1:8000 (args go to `comfyhub serve`).
# Runs in the repository root (bootstrap.sh changes there): .env and runtime/ are read from there.
source "$(dirname "$0")/bootstrap.sh" ""
exec .venv/bin/comfyhub serve "$@"
