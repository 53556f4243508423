#!/usr/bin/env bash
# kubernetes-validate for the manifests in deploy/kubernetes (and tests/test_kubernetes.py): builds .venv-k8s, a
# virtualenv of its own, if it is missing or holds another version; then runs kubernetes-validate with the
# arguments, if any. It validates offline, against the Kubernetes API schemas it ships (1.25 to 1.37 in 1.37.0);
# the manifests are checked against 1.29, the oldest they are written for, and 1.37.
# Example: bash scripts/k8s.sh --strict -k 1.29.0 -k 1.37.0 deploy/kubernetes/sync-cronjob/cronjob.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
pins=("kubernetes-validate==1.37.0")
if ! .venv-k8s/bin/python - "${pins[@]}" 2>/dev/null <<'PY'
import importlib.metadata as metadata, sys
sys.exit(any(metadata.version(name) != version for name, version in (p.split("==") for p in sys.argv[1:])))
PY
then
  python3 -m venv .venv-k8s
  .venv-k8s/bin/python -m pip install --quiet --disable-pip-version-check "${pins[@]}"
fi
[ "$#" -eq 0 ] || exec .venv-k8s/bin/kubernetes-validate "$@"
