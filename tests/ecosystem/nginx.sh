#!/usr/bin/env bash
# Proves tests/nginx/bgtasks.conf, the README's nginx configuration, with
# real nginx in front of three bgtasks servers (tests/ecosystem/nginx.py
# says what it checks). Installs nginx when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/ecosystem/lib.sh

need_apt nginx nginx
build_bgtasks
python3 tests/ecosystem/nginx.py "$BIN" "$WORK"
