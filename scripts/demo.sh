#!/usr/bin/env bash
# Build .venv (if needed) with the project, then run the self-contained demo.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
.venv/bin/smartcar-etl demo "$@"
echo
echo "The job is installed in .venv: run .venv/bin/smartcar-etl --help, or put it on your PATH with"
echo "  . .venv/bin/activate"
