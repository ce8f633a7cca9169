#!/usr/bin/env bash
# Install promtool (Prometheus' config and rule checker) from source with the Go toolchain, into
# ${NOVAQUOTA_TOOLS_DIR:-$HOME/.cache/novaquota/bin}. Idempotent: an installed promtool of the
# pinned version is kept. Prints the path of the binary on success.
#
#   bash ops/tools/promtool.sh          # install (or confirm) and print the path
#   PROMTOOL_VERSION=v0.316.0 bash ops/tools/promtool.sh
#
# The Go module version v0.316.0 is Prometheus 3.16.0. Building takes a few minutes the first
# time (the module cache makes later builds fast).
set -euo pipefail

version="${PROMTOOL_VERSION:-v0.316.0}"
dir="${NOVAQUOTA_TOOLS_DIR:-$HOME/.cache/novaquota/bin}"
bin="$dir/promtool"
stamp="$dir/.promtool-version"

if [[ -x "$bin" && -f "$stamp" && "$(cat "$stamp")" == "$version" ]]; then
    echo "$bin"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    for candidate in /usr/local/go/bin/go /usr/lib/go/bin/go; do
        if [[ -x "$candidate" ]]; then
            PATH="$(dirname "$candidate"):$PATH"
            break
        fi
    done
fi
if ! command -v go >/dev/null 2>&1; then
    # No Go on this machine: fetch the toolchain itself from the Go module proxy, where each Go
    # release is published as the module golang.org/toolchain.
    goversion="${GO_TOOLCHAIN_VERSION:-1.26.8}"
    goroot="${NOVAQUOTA_TOOLS_DIR:-$HOME/.cache/novaquota}/go-$goversion"
    if [[ ! -x "$goroot/bin/go" ]]; then
        arch="$(uname -m)"; case "$arch" in x86_64) arch=amd64;; aarch64|arm64) arch=arm64;; esac
        url="${GOPROXY_URL:-https://proxy.golang.org}/golang.org/toolchain/@v/v0.0.1-go$goversion.linux-$arch.zip"
        echo "promtool.sh: no go found; fetching Go $goversion from $url" >&2
        tmp="$(mktemp -d)"
        python3 - "$url" "$tmp" "$goroot" <<'PY'
import os, shutil, sys, urllib.request, zipfile
url, tmp, goroot = sys.argv[1:]
zpath = os.path.join(tmp, "go.zip")
with urllib.request.urlopen(url, timeout=600) as resp, open(zpath, "wb") as out:
    shutil.copyfileobj(resp, out)
with zipfile.ZipFile(zpath) as z:
    z.extractall(tmp)
base = os.path.join(tmp, "golang.org")  # the zip holds golang.org/toolchain@<version>/...
(top,) = os.listdir(base)
src = os.path.join(base, top)
for root, _dirs, files in os.walk(src):  # module zips keep no file modes
    if "/bin" in root or "/pkg/tool/" in root:
        for f in files:
            os.chmod(os.path.join(root, f), 0o755)
os.makedirs(os.path.dirname(goroot), exist_ok=True)
shutil.move(src, goroot)
PY
        rm -rf "$tmp"
    fi
    PATH="$goroot/bin:$PATH"
    export GOTOOLCHAIN=local
fi
mkdir -p "$dir"
echo "promtool.sh: building promtool $version with $(go version) ..." >&2
GOBIN="$dir" GOFLAGS="${GOFLAGS:-} -trimpath" CGO_ENABLED=0 \
    go install "github.com/prometheus/prometheus/cmd/promtool@$version"
echo "$version" >"$stamp"
"$bin" --version >&2
echo "$bin"
