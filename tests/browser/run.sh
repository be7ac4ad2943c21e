#!/usr/bin/env bash
# Runs the dashboard's real-browser test (tests/browser/dashboard.test.mjs)
# against target/release/bgtasks. Installs what is missing — Debian's
# chromium, node, and playwright-core (pinned) in a cache outside the
# repository — and does nothing more when it is all there.
set -euo pipefail
cd "$(dirname "$0")/../.."

PLAYWRIGHT_VERSION=1.65.1
export PLAYWRIGHT_DIR="${PLAYWRIGHT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bgtasks-browser-test}"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

missing=()
[ -x "$CHROMIUM" ] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

installed=$(node -p "require('$PLAYWRIGHT_DIR/node_modules/playwright-core/package.json').version" 2>/dev/null || true)
if [ "$installed" != "$PLAYWRIGHT_VERSION" ]; then
    mkdir -p "$PLAYWRIGHT_DIR"
    npm install --prefix "$PLAYWRIGHT_DIR" --no-audit --no-fund --no-save --loglevel=error \
        "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null
fi

# A no-op when .ci/run's cargo test --release has just built it.
[ -n "${BGTASKS_BIN:-}" ] || cargo build --release --quiet
exec node --test tests/browser/dashboard.test.mjs
