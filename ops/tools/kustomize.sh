#!/usr/bin/env bash
# Provide kustomize (renders deploy/k8s/ for tests/unit/test_k8s_manifests.py) in
# ${NOVAQUOTA_TOOLS_DIR:-$HOME/.cache/novaquota/bin} and print the path of the binary.
# Idempotent: a kustomize of the wanted version already there is kept.
#
# Built from source with Go (`go install sigs.k8s.io/kustomize/kustomize/v5@KUSTOMIZE_VERSION`,
# default v5.8.0) through the Go module proxy; Go itself comes from ops/tools/go.sh. About
# half a minute on 2 cores.
#
#   bash ops/tools/kustomize.sh          # provide (or confirm) and print the path
set -euo pipefail

version="${KUSTOMIZE_VERSION:-v5.8.0}"
dir="${NOVAQUOTA_TOOLS_DIR:-$HOME/.cache/novaquota/bin}"
bin="$dir/kustomize"
stamp="$dir/.kustomize-version"

if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$version" ]]; then
    echo "$bin"
    exit 0
fi
go="$(bash "$(dirname "${BASH_SOURCE[0]}")/go.sh")"
mkdir -p "$dir"
echo "kustomize.sh: building kustomize $version with $("$go" version) ..." >&2
GOTOOLCHAIN=local GOBIN="$dir" GOFLAGS="${GOFLAGS:-} -trimpath" CGO_ENABLED=0 \
    "$go" install "sigs.k8s.io/kustomize/kustomize/v5@$version"
echo "$version" >"$stamp"
"$bin" version >&2
echo "$bin"
