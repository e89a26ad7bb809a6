#!/usr/bin/env bash
# Validate deploy/: the Kubernetes manifests with kubeconform, the systemd unit
# with systemd-analyze verify. Works offline after the first run.
#
# kubeconform is built from the Go module proxy (pinned). It normally downloads
# its JSON schemas from GitHub, which CI cannot reach; the same schemas (the
# "local-strict" flavour, one directory per Kubernetes version) ship in the PyPI
# package kubernetes-validate, so its wheel is fetched with pip (pinned) and the
# schema directories are read from disk. Both are cached under
# ~/.cache/sessiond-deploy.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${SESSIOND_DEPLOY_CACHE:-$HOME/.cache/sessiond-deploy}
KUBECONFORM=github.com/yannh/kubeconform/cmd/kubeconform@v0.8.0
SCHEMAS=kubernetes-validate==1.37.0
# The oldest and the newest Kubernetes the manifests are checked against.
KUBERNETES_VERSIONS=(1.30.0 1.37.0)
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}

say() { printf 'check_deploy: %s\n' "$*" >&2; }

bin="$CACHE/bin/${KUBECONFORM##*@}"
if [ ! -x "$bin/kubeconform" ]; then
  say "building $KUBECONFORM"
  mkdir -p "$bin"
  GOBIN="$bin" CGO_ENABLED=0 go install "$KUBECONFORM"
fi

schemas="$CACHE/schemas/${SCHEMAS##*==}"
if [ ! -f "$schemas/.complete" ]; then
  say "fetching the schemas in $SCHEMAS"
  download=$(mktemp -d)
  "$PYTHON" -m pip download --quiet --no-deps --dest "$download" "$SCHEMAS"
  # Each schema names itself with an "$id" under https://kubernetes.io/api/ and
  # points into "/api/_definitions.json": kubernetes-validate resolves those with
  # its own loader. Without the "$id" and with the pointer made relative,
  # kubeconform resolves them to the file beside it, on disk.
  "$PYTHON" - "$download"/kubernetes_validate-*.whl "$schemas" <<'PY'
import json
import sys
import zipfile
from pathlib import Path

wheel, target = zipfile.ZipFile(sys.argv[1]), Path(sys.argv[2])
prefix = "kubernetes_validate/kubernetes-json-schema/"
for name in wheel.namelist():
    if name.startswith(prefix) and "-local-strict/" in name and name.endswith(".json"):
        schema = json.loads(wheel.read(name))
        schema.pop("$id", None)
        text = json.dumps(schema).replace('"/api/_definitions.json#', '"_definitions.json#')
        out = target / name[len(prefix):]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
(target / ".complete").touch()
PY
  rm -rf "$download"
fi

location="$schemas/{{ .NormalizedKubernetesVersion }}-local-strict/{{ .ResourceKind }}{{ .KindSuffix }}.json"
for version in "${KUBERNETES_VERSIONS[@]}"; do
  [ -d "$schemas/v$version-local-strict" ] || { say "no schemas for Kubernetes $version"; exit 1; }
  # The check must be able to fail: a misspelt field is refused before the real files are read.
  refusal=$(printf 'apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replica: 1}\n' |
    "$bin/kubeconform" -strict -kubernetes-version "$version" -schema-location "$location" - 2>&1 || true)
  if [[ "$refusal" != *"'replica' not allowed"* ]]; then
    say "kubeconform did not refuse a misspelt field; are the schemas read? $refusal"; exit 1
  fi
  say "Kubernetes $version"
  "$bin/kubeconform" -strict -summary -kubernetes-version "$version" \
    -schema-location "$location" deploy/kubernetes
done

unit=deploy/systemd/sessiond.service
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify also checks that ExecStart's program exists: point it at this checkout's
  # sessiond (the unit names /opt/sessiond, where the server is installed for real).
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  sessiond=$(command -v "$(dirname "$PYTHON")/sessiond" || command -v sessiond || echo /bin/true)
  sed "s#/opt/sessiond/bin/sessiond#$(realpath "$sessiond")#" "$unit" > "$work/sessiond.service"
  output=$(systemd-analyze verify "$work/sessiond.service" 2>&1) || { echo "$output" >&2; exit 1; }
  if [ -n "$output" ]; then  # warnings (an unknown key, a bad value) fail the check too
    echo "$output" >&2; exit 1
  fi
  say "$unit: systemd-analyze verify found nothing"
else
  say "systemd-analyze is not installed; $unit not verified"
fi
