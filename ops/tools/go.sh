#!/usr/bin/env bash
# Print the path of a Go toolchain's `go` binary, the quickest way this machine allows:
#
#   1. `go` on PATH, or in /usr/local/go/bin or /usr/lib/go/bin;
#   2. fetched once from the Go module proxy, where each Go release is published as the module
#      golang.org/toolchain (GO_TOOLCHAIN_VERSION, default 1.26.8), into
#      ${NOVAQUOTA_TOOLS_DIR:-$HOME/.cache/novaquota}/go-<version>.
#
# Used by the tool scripts beside it (promtool.sh, kustomize.sh) to build Go tools from source.
# Callers run the printed binary with GOTOOLCHAIN=local, so that it never swaps itself for
# another release.
set -euo pipefail

if command -v go >/dev/null 2>&1; then
    command -v go
    exit 0
fi
for candidate in /usr/local/go/bin/go /usr/lib/go/bin/go; do
    if [[ -x "$candidate" ]]; then
        echo "$candidate"
        exit 0
    fi
done
goversion="${GO_TOOLCHAIN_VERSION:-1.26.8}"
goroot="${NOVAQUOTA_TOOLS_DIR:-$HOME/.cache/novaquota}/go-$goversion"
if [[ ! -x "$goroot/bin/go" ]]; then
    arch="$(uname -m)"; case "$arch" in x86_64) arch=amd64;; aarch64|arm64) arch=arm64;; esac
    url="${GOPROXY_URL:-https://proxy.golang.org}/golang.org/toolchain/@v/v0.0.1-go$goversion.linux-$arch.zip"
    echo "go.sh: no go found; fetching Go $goversion from $url" >&2
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
echo "$goroot/bin/go"
