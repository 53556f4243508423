#!/usr/bin/env bash
# Build .venv (if needed) with the locked dependencies, the project and its test tools, then run the whole test
# suite.
# PostgreSQL tests use ETL_TEST_POSTGRES_URL, defaulting to the local server on 127.0.0.1:5432, and
# MariaDB tests ETL_TEST_MARIADB_URL, defaulting to 127.0.0.1:3306 (root, no password); they create
# and drop databases of their own. Extra arguments go to pytest (after ours: `-n 0` runs in one process).
# The tests run in one worker process per core, at most 4 (pytest-xdist); each worker has databases of
# its own, and 4 keep a MariaDB server's default 151 connections far away. Tests marked with one xdist_group run
# in one worker (tests/test_image.py: one image build).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
# The runtime dependencies exactly as the container image has them: requirements/lock.txt, every file checked
# against its hash (scripts/lock.sh renews it); then the project itself without dependencies; then the test tools,
# whose versions are not locked or hashed, held to the lock's versions of anything they share with the job.
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --require-hashes -r requirements/lock.txt
"${pip[@]}" --no-deps -e .
pins=$(mktemp)
sed -n -E 's/^([A-Za-z0-9._-]+==[^ ;]+).*/\1/p' requirements/lock.txt > "$pins"
"${pip[@]}" -c "$pins" -e '.[test]' || { rm -f "$pins"; exit 1; }
rm -f "$pins"
export ETL_TEST_POSTGRES_URL="${ETL_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}"
export ETL_TEST_MARIADB_URL="${ETL_TEST_MARIADB_URL:-mariadb+pymysql://root@127.0.0.1:3306/test}"
workers=$(.venv/bin/python -c 'import os
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
print(min(4, cores))')
exec .venv/bin/python -m pytest -n "$workers" --dist loadgroup "$@"
