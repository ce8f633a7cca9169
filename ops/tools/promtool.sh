#!/usr/bin/env bash
# Provide promtool (Prometheus' config and rule checker) in
# ${NOVAQUOTA_TOOLS_DIR:-$HOME/.cache/novaquota/bin}, the quickest way this machine allows, and
# print the path of the binary. Idempotent: a promtool already there is kept.
#
#   1. one already installed there, or on PATH;
#   2. the Debian package `prometheus` (downloaded with apt-get and unpacked, not installed);
#   3. built from source with Go (PROMTOOL_VERSION, default v0.316.0 = Prometheus 3.16.0),
#      fetching the Go toolchain from the Go module proxy if the machine has none. Building
#      compiles most of Prometheus: many minutes on 2 cores.
#
#   bash ops/tools/promtool.sh          # provide (or confirm) and print the path
#   PROMTOOL_FROM=go bash ops/tools/promtool.sh   # skip 1 and 2
set -euo pipefail

version="${PROMTOOL_VERSION:-v0.316.0}"
dir="${NOVAQUOTA_TOOLS_DIR:-$HOME/.cache/novaquota/bin}"
bin="$dir/promtool"
stamp="$dir/.promtool-version"
from="${PROMTOOL_FROM:-any}"

if [[ "$from" == "any" ]]; then
    if [[ -x "$bin" && -f "$stamp" ]]; then
        echo "$bin"
        exit 0
    fi
    if command -v promtool >/dev/null 2>&1; then
        command -v promtool
        exit 0
    fi
    if command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then
        tmp="$(mktemp -d)"
        chmod 777 "$tmp"  # apt's download user writes here
        if (cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 ||
                { apt-get update -qq >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; }; }); then
            dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
            mkdir -p "$dir"
            cp "$tmp/x/usr/bin/promtool" "$bin"
            deb="$(basename "$tmp"/prometheus_*.deb)"
            echo "debian:$deb" >"$stamp"
            rm -rf "$tmp"
            "$bin" --version >&2
            echo "$bin"
            exit 0
        fi
        rm -rf "$tmp"
        echo "promtool.sh: the Debian package could not be fetched; building with Go" >&2
    fi
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
