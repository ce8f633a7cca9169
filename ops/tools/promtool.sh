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
go="$(bash "$(dirname "$0")/go.sh")"  # a Go toolchain, fetched once if the machine has none
PATH="$(dirname "$go"):$PATH"
export GOTOOLCHAIN=local
mkdir -p "$dir"
echo "promtool.sh: building promtool $version with $(go version) ..." >&2
GOBIN="$dir" GOFLAGS="${GOFLAGS:-} -trimpath" CGO_ENABLED=0 \
    go install "github.com/prometheus/prometheus/cmd/promtool@$version"
echo "$version" >"$stamp"
"$bin" --version >&2
echo "$bin"
