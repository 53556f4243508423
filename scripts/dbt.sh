#!/usr/bin/env bash
# dbt for the project in dbt/ (and tests/test_dbt.py): builds .venv-dbt, a virtualenv of its own with
# dbt-postgres, if it is missing or holds other versions; then runs dbt with the arguments, if any.
# dbt-core is pinned to the 1.11 series beside dbt-postgres 1.11.0: a newer dbt-core would be chosen
# otherwise, and the newest here needs a parser that downloads a binary while it installs.
# Example: bash scripts/dbt.sh build --project-dir dbt --profiles-dir ~/.dbt --target-path /tmp/dbt-target
set -euo pipefail
cd "$(dirname "$0")/.."
pins=("dbt-postgres==1.11.0" "dbt-core==1.11.16")
if ! .venv-dbt/bin/python - "${pins[@]}" 2>/dev/null <<'PY'
import importlib.metadata as metadata, sys
sys.exit(any(metadata.version(name) != version for name, version in (p.split("==") for p in sys.argv[1:])))
PY
then
  python3 -m venv .venv-dbt
  .venv-dbt/bin/python -m pip install --quiet --disable-pip-version-check "${pins[@]}"
fi
[ "$#" -eq 0 ] || exec .venv-dbt/bin/dbt "$@"
