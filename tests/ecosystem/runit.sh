#!/usr/bin/env bash
# Runs tests/supervisors/runit/bgtasks, the runit service the README
# gives, under runit's own runsv and sv, without a running runit init and
# without touching the machine: the service directory is copied to a
# scratch directory and runsv is started on it directly. In the copy, the
# two lines that name things of an installed system (the user, the
# binary's path) are pointed at this user and the binary under test, and
# the env directory at a port the kernel picks and a scratch data
# directory. Checks:
# - `sh -n` accepts both scripts;
# - runsv starts bgtasks, and its log service gets lines that start with
#   bgtasks's UTC time;
# - a task submitted there survives `sv down` (SIGTERM: bgtasks exits 0
#   by itself, well within sv's wait) and `sv up`;
# - `sv exit` ends runsv and the log service.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/ecosystem/lib.sh

need_apt runsv runit
build_bgtasks
src=tests/supervisors/runit/bgtasks
sh -n "$src/run"
sh -n "$src/log/run"

sv=$WORK/sv/bgtasks
mkdir -p "$WORK/sv"
cp -a "$src" "$sv"
grep -q '^exec chpst -u bgtasks -e ./env /usr/local/bin/bgtasks$' "$sv/run" ||
    fail "the run script's last line changed: update this script"
sed -i "s|^exec chpst -u bgtasks -e ./env /usr/local/bin/bgtasks\$|exec chpst -u $(id -un) -e ./env $BIN|" "$sv/run"
echo 127.0.0.1:0 >"$sv/env/BGTASKS_ADDR"
echo "$WORK/data" >"$sv/env/BGTASKS_DATA_DIR"

runsv "$sv" &
EXTRA_PIDS+=($!)
# Whatever happens, runsv takes bgtasks and the log service down with it
# before lib.sh's cleanup removes the scratch directory.
trap 'sv -w 10 force-shutdown "$sv" >/dev/null 2>&1 || true; cleanup' EXIT
log=$sv/log/main/current

# Waits up to 60 s for a command to succeed: wait_for WHAT CMD...
wait_for() {
    local what=$1 i
    shift
    for i in $(seq 600); do
        "$@" >/dev/null 2>&1 && return
        sleep 0.1
    done
    fail "no $what within 60 s"
}

# Prints the address bgtasks last said it listens on.
address() {
    grep -o 'listening on http://[0-9.:]*' "$log" | tail -n 1 | sed 's|listening on http://||'
}

wait_for "listening line in $log" grep -q 'listening on http://' "$log"
sv status "$sv"
time='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z INFO  \[bgtasks\] listening on '
grep -Eq "$time" "$log" || fail "the log line has no time: $(cat "$log")"
addr=$(address)
answer=$(curl -sS -X POST "http://$addr/tasks" -d '{"task_id": "under-runit", "work_duration": "1h"}')
id=$(echo "$answer" | sed -n 's/.*"id": "\([^"]*\)".*/\1/p')
[ -n "$id" ] || fail "no id in $answer"
pid=$(sv status "$sv" | sed -n 's/^run: [^(]*(pid \([0-9]*\)).*/\1/p')
[ -n "$pid" ] || fail "sv status names no pid"

sv -w 15 down "$sv" || fail "sv down did not stop bgtasks"
sv status "$sv" | grep -q '^down: ' || fail "not down: $(sv status "$sv")"
! kill -0 "$pid" 2>/dev/null || fail "bgtasks (pid $pid) is still running"
grep -q 'shutdown complete' "$log" || fail "no clean shutdown in the log: $(cat "$log")"

lines=$(grep -c 'listening on' "$log")
sv -w 15 up "$sv"
wait_for "second listening line" test "$(grep -c 'listening on' "$log")" -gt "$lines"
addr=$(address)
curl -sS "http://$addr/tasks/$id" | grep -q '"task_id": "under-runit"' ||
    fail "task $id did not survive the restart"

sv -w 15 exit "$sv"
wait_for "runsv to exit" sh -c "! kill -0 ${EXTRA_PIDS[0]} 2>/dev/null"
echo "runit: bgtasks started, logged with times, stopped cleanly by sv down, came back with its task"
cat "$log"
