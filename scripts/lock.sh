#!/usr/bin/env bash
# Renew requirements/lock.txt, the runtime dependencies pinned to exact versions with the sha256 of every file
# the index holds for each (every wheel and the sdist), which the container image and scripts/test.sh install with
# `pip install --require-hashes`. pip-compile (pip-tools) runs from .venv-lock, a virtualenv of its own, on the
# running Python; the lock is then checked for Python 3.11, 3.12 and 3.13 with pip's resolver (a dry run for that
# version, no interpreter of it needed): the same packages and versions, every file hashed. If a version ever
# resolves differently, this says so and exits 1: the lock must then be split per version.
# pip's configuration files and local wheel directories are ignored: the lock names only what the index
# (PIP_INDEX_URL, default PyPI) serves, which is all a container build can reach.
# Example: bash scripts/lock.sh            # then review `git diff requirements/` and commit it
set -euo pipefail
cd "$(dirname "$0")/.."
pins=("pip==25.3" "pip-tools==7.5.2")
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_CONSTRAINT
if ! .venv-lock/bin/python - "${pins[@]}" 2>/dev/null <<'PY'
import importlib.metadata as metadata, sys
sys.exit(any(metadata.version(name) != version for name, version in (p.split("==") for p in sys.argv[1:])))
PY
then
  python3 -m venv .venv-lock
  .venv-lock/bin/python -m pip install --quiet "${pins[@]}"
fi
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" .venv-lock/bin/pip-compile --quiet --generate-hashes --strip-extras \
  --no-emit-index-url --no-emit-find-links --allow-unsafe --upgrade --output-file requirements/lock.txt pyproject.toml

reports=$(mktemp -d)
trap 'rm -rf "$reports"' EXIT
for version in 3.11 3.12 3.13; do
  .venv-lock/bin/python -m pip install --quiet --dry-run --ignore-installed --only-binary=:all: \
    --python-version "$version" --require-hashes --report "$reports/$version.json" -r requirements/lock.txt
done
.venv-lock/bin/python - "$reports"/*.json <<'PY'
import json, sys
resolved = {}
for path in sys.argv[1:]:
    report = json.load(open(path))
    resolved[path.rsplit("/", 1)[1][:-5]] = sorted((i["metadata"]["name"].lower(), i["metadata"]["version"])
                                                   for i in report["install"])
first, *others = resolved
for version in others:
    if resolved[version] != resolved[first]:
        sys.exit(f"Python {version} resolves the lock differently from {first}: split requirements/lock.txt per "
                 f"version\n  {first}: {resolved[first]}\n  {version}: {resolved[version]}")
print(f"requirements/lock.txt: {len(resolved[first])} packages, the same for Python {', '.join(resolved)}")
PY
