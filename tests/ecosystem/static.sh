#!/usr/bin/env bash
# The static build the README gives for small boxes: glibc linked in, so
# the one file runs on any x86_64 Linux with no libc of its own. Builds it
# (into target/static, so the normal build is left alone), checks that
# ldd finds no shared library to load, and runs a smoke set of the
# end-to-end tests against it through the harness's BGTASKS_BIN: first
# contact, the task lifecycle, the journal (kill -9, compaction, damage),
# program handlers, flags and logs, and a backup taken under load.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --target x86_64-unknown-linux-gnu --target-dir target/static
bin=$PWD/target/static/x86_64-unknown-linux-gnu/release/bgtasks
# A static PIE reads "statically linked" (exit 0); a static non-PIE,
# "not a dynamic executable" (exit 1).
deps=$(ldd "$bin" 2>&1 || true)
case $deps in
*"statically linked"* | *"not a dynamic executable"*) echo "ldd $bin: $deps" ;;
*)
    echo "FAIL: $bin needs shared libraries:" >&2
    echo "$deps" >&2
    exit 1
    ;;
esac
echo "static binary: $(stat -c %s "$bin") bytes"
BGTASKS_BIN=$bin cargo test --release \
    --test first_contact --test lifecycle --test journal --test handlers \
    --test cli --test backup
