#!/usr/bin/env bash
# Runs Schemathesis (`st run`, its default checks) against a live bgtasks
# and its own /openapi.json, twice: a server without --token, and one with
# it (st sends the header). Both runs must find no failure. Then
# openapi_answers.py checks the answers st cannot provoke against the same
# document. Installs Schemathesis (pinned) when it is missing.
#
# /events is left out: a stream never ends, and it has its own tests. The
# request timeout is above the longest long poll (`?wait=` is cut to 60s).
# The queue is large enough that no submission meets a full queue: a 503
# by design is still a 5xx to Schemathesis' not_a_server_error.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/ecosystem/lib.sh

SCHEMATHESIS_VERSION=4.32.5
# st in a virtual environment of its own under target/ (kept between runs,
# like the build), never in the system's Python.
VENV=$PWD/target/ci-venv
ST=$VENV/bin/st
if [ "$("$ST" --version 2>/dev/null)" != "st, version $SCHEMATHESIS_VERSION" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
build_bgtasks

# One run: start a server (with --token when $2 is not empty), run st on
# its document, stop the server; print st's summary, or all of it on failure.
run_st() {
    local label=$1 token=$2
    local args=(--buffer 1000000 --queue batch=2/1000
        --schedule 'tick=@every 1s {"work_duration": "0s"}')
    local headers=()
    if [ -n "$token" ]; then
        args+=(--token "$token")
        headers=(-H "Authorization: Bearer $token")
    fi
    start_bgtasks st "${args[@]}"
    echo "== schemathesis, $label: $(server_url st)"
    local log="$WORK/st-$label.log" status=0
    (cd "$WORK" && "$ST" --config-file "$OLDPWD/tests/ecosystem/schemathesis.toml" \
        run "$(server_url st)/openapi.json" "${headers[@]}" \
        --exclude-path /events --request-timeout 70 --max-examples 100 \
        --no-color) >"$log" 2>&1 || status=$?
    stop_bgtasks st
    if [ "$status" -ne 0 ]; then
        cat "$log"
        echo "schemathesis ($label) failed: exit $status" >&2
        exit 1
    fi
    grep -A1 '^Test cases:' "$log" | tail -1
    grep -E '^=+ .* in [0-9.]+s =+$' "$log" | tail -1
}

run_st "without token" ""
run_st "with token" "st-$RANDOM$RANDOM"
# What a fuzzer cannot provoke (a full queue, an evicted record, shutdown),
# provoked on purpose and held to the same document.
"$VENV/bin/python" tests/ecosystem/openapi_answers.py "$BIN"
