#!/usr/bin/env bash
# Build .venv (if needed) with the project, then run the self-contained demo.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/smartcar-etl demo "$@"
