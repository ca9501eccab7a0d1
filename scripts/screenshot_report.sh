#!/usr/bin/env bash
# Open a report page in headless Chromium, check that every figure loaded, and take a screenshot.
#
# Usage: scripts/screenshot_report.sh REPORT_DIR [SCREENSHOT.png] [WIDTH,HEIGHT]
#   REPORT_DIR   a folder written by `ppp-audit ... --out REPORT_DIR` (holds report.html)
#   SCREENSHOT   where to write the PNG (default REPORT_DIR/screenshot.png)
#   WIDTH,HEIGHT window size in CSS px (default 1280,2400)
#
# Needs Debian's `chromium` (apt-get install -y chromium). The page sets <html data-images-loaded="k/n"> from an
# inline script once the window has loaded; the script reads it from --dump-dom and exits 1 unless k == n > 0.
# Networking is switched off as far as Chromium allows (the page itself forbids network loads with a CSP).
set -euo pipefail

dir=${1:?usage: $0 REPORT_DIR [SCREENSHOT.png] [WIDTH,HEIGHT]}
page=$(realpath "$dir/report.html")
shot=$(realpath -m "${2:-$dir/screenshot.png}")
size=${3:-1280,2400}
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "chromium not found: apt-get install -y chromium" >&2; exit 2; }

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
       --disable-sync --no-first-run --disable-extensions --hide-scrollbars --user-data-dir="$profile"
       --virtual-time-budget=5000)

dom=$("$browser" "${flags[@]}" --dump-dom "file://$page" 2>/dev/null)
loaded=$(grep -o 'data-images-loaded="[0-9]*/[0-9]*"' <<<"$dom" | head -n1 | grep -o '[0-9]*/[0-9]*' || true)
"$browser" "${flags[@]}" --window-size="$size" --screenshot="$shot" "file://$page" >/dev/null 2>&1
echo "page: $page"
echo "screenshot: $shot ($size)"
echo "figures loaded: ${loaded:-unknown (script did not run)}"
[ -n "$loaded" ] && [ "${loaded%/*}" = "${loaded#*/}" ] && [ "${loaded#*/}" != 0 ]
