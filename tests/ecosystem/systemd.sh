#!/usr/bin/env bash
# Checks tests/systemd/bgtasks.service, the unit file the README gives, with
# systemd's own tools, without a running systemd and without touching the
# machine: a scratch root holds the unit, the binary at the unit's
# ExecStart path, and a copy of the system's units (verify needs the
# targets the unit is ordered against).
# - `systemd-analyze verify` must exit 0 and print nothing (an unknown key
#   is only a warning to it, so its silence is the test);
# - `systemd-analyze security --offline` must still rate the hardening OK
#   (an exposure below 2.0).
# The notify protocol itself is tests/ecosystem.rs's business.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/ecosystem/lib.sh

need_apt systemd-analyze systemd
build_bgtasks
root=$WORK/root
mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp "$BIN" "$root/usr/local/bin/bgtasks"
cp tests/systemd/bgtasks.service "$root/etc/systemd/system/"
grep -q '^ExecStart=/usr/local/bin/bgtasks ' "$root/etc/systemd/system/bgtasks.service" ||
    fail "ExecStart is not /usr/local/bin/bgtasks: update this script"

status=0
systemd-analyze verify --root="$root" bgtasks.service >"$WORK/verify.txt" 2>&1 || status=$?
cat "$WORK/verify.txt"
echo "systemd-analyze verify bgtasks.service: exit $status"
[ "$status" -eq 0 ] && [ ! -s "$WORK/verify.txt" ] || fail "systemd-analyze verify complained"

systemd-analyze security --offline=yes --root="$root" bgtasks.service >"$WORK/security.txt" 2>&1 ||
    { cat "$WORK/security.txt"; fail "systemd-analyze security failed"; }
overall=$(grep 'Overall exposure level' "$WORK/security.txt")
echo "${overall#→ }"
exposure=$(echo "$overall" | grep -o '[0-9]*\.[0-9]' | head -1)
awk -v e="$exposure" 'BEGIN { exit !(e < 2.0) }' ||
    { grep '✗' "$WORK/security.txt"; fail "exposure $exposure: the hardening regressed"; }
