#!/usr/bin/env bash
# Re-fetch the browser libraries the web page vendors (no CDN: V-Stack serves
# every asset itself) and rewrite web/static/vendor/VERSIONS.txt.
#
#   tools/vendor_web.sh            fetch the pinned versions below
#   HLS_VERSION=1.7.5 tools/vendor_web.sh   try another version, then pin it here
#
# Needs npm (only `npm pack`, which downloads a registry tarball; nothing is
# installed and no package script runs). Not run by CI: the vendored files are
# committed. After an update, check the pages in a browser and commit
# web/static/vendor/ together with the new pins in this file.
set -euo pipefail

HLS_VERSION="${HLS_VERSION:-1.7.4}"
UPLOT_VERSION="${UPLOT_VERSION:-1.6.32}"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$here/web/static/vendor"
work="$(mktemp -d "${TMPDIR:-/tmp}/vstack-vendor.XXXXXX")"
trap 'rm -rf "$work"' EXIT

command -v npm >/dev/null || { echo "vendor_web.sh: npm is not installed" >&2; exit 1; }
mkdir -p "$dest"

# fetch NAME VERSION -> prints the tarball's sha512 integrity; unpacks into $work/NAME
fetch() {
    local name="$1" version="$2" tgz integrity
    tgz="$work/$(cd "$work" && npm pack --silent "$name@$version" | tail -n1)"
    integrity="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
    local expected
    expected="$(npm view --silent "$name@$version" dist.integrity)"
    if [[ "$integrity" != "$expected" ]]; then
        echo "vendor_web.sh: $name@$version integrity mismatch: $integrity != $expected" >&2
        exit 1
    fi
    mkdir -p "$work/$name"
    tar -xzf "$tgz" -C "$work/$name" --strip-components=1
    echo "$integrity"
}

hls_integrity="$(fetch hls.js "$HLS_VERSION")"
uplot_integrity="$(fetch uplot "$UPLOT_VERSION")"

# hls.js: the full build (ABR, subtitles, EME). The light build would do for the
# gateway's plain MPEG-TS VOD playlists, but the full one costs little more and
# copes with whatever a later gateway serves.
cp "$work/hls.js/dist/hls.min.js"        "$dest/hls.min.js"
# The transmuxing worker as a file of our own: the page's Content-Security-Policy
# (default-src 'self') forbids the blob: worker hls.js would otherwise inject.
cp "$work/hls.js/dist/hls.worker.js"     "$dest/hls.worker.js"
cp "$work/hls.js/LICENSE"                "$dest/hls.js-LICENSE.txt"
cp "$work/uplot/dist/uPlot.iife.min.js"  "$dest/uPlot.iife.min.js"
cp "$work/uplot/dist/uPlot.min.css"      "$dest/uPlot.min.css"
cp "$work/uplot/LICENSE"                 "$dest/uPlot-LICENSE.txt"

{
    echo "# Browser libraries vendored into web/static/vendor/ by tools/vendor_web.sh."
    echo "# Fetched from the npm registry with npm pack; never loaded from a CDN."
    echo "# name version npm-integrity"
    echo "hls.js $HLS_VERSION $hls_integrity"
    echo "uplot $UPLOT_VERSION $uplot_integrity"
    echo
    echo "# sha256 file"
    (cd "$dest" && sha256sum hls.min.js hls.worker.js hls.js-LICENSE.txt uPlot.iife.min.js uPlot.min.css uPlot-LICENSE.txt)
} > "$dest/VERSIONS.txt"

echo "vendored hls.js $HLS_VERSION and uPlot $UPLOT_VERSION into $dest"
cat "$dest/VERSIONS.txt"
