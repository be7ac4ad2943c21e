#!/usr/bin/env bash
# Checks a live /metrics with Prometheus' own linter: `promtool check
# metrics` must print nothing. The server first sees everything that puts a
# series in /metrics: several queues (one paused), a schedule that fired, a
# delayed task, and tasks of every outcome — succeeded, failed (a handler
# that exits 1), cancelled — and a 503 from a full queue. Installs Debian's
# prometheus package (for promtool) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/ecosystem/lib.sh

need_apt promtool prometheus
build_bgtasks
start_bgtasks metrics --workers 2 --queue fast=2/10 --queue slow=1/1 \
    --handler fail=/bin/false \
    --schedule 'tick=@every 1s {"work_duration": "0s"}'
url=$(server_url metrics)

# Prints the status code of a POST to $1 with body $2.
post() {
    curl -s -o /dev/null -w '%{http_code}' -X POST -d "$2" "$url$1"
}

# Waits until the sample $1 (name and labels, as written) is at least $2.
wait_sample() {
    local i
    for i in $(seq 600); do
        curl -s "$url/metrics" |
            awk -v s="$1" -v min="$2" 'substr($0, 1, length(s) + 1) == s " " && $NF >= min { ok = 1 } END { exit !ok }' &&
            return
        sleep 0.1
    done
    fail "$1 never reached $2 in /metrics"
}

[ "$(post /tasks '{"work_duration": "0s", "queue": "fast"}')" = 202 ] || fail "a task that succeeds"
[ "$(post /tasks '{"kind": "fail"}')" = 202 ] || fail "a task that fails"
# The slow queue: one running, one waiting, and the next refused.
for expected in 202 202 503; do
    [ "$(post /tasks '{"work_duration": "60s", "queue": "slow"}')" = "$expected" ] ||
        fail "slow queue: expected $expected"
done
id=$(curl -s -X POST -d '{"work_duration": "60s"}' "$url/tasks" | sed -n 's/.*"id": "\([^"]*\)".*/\1/p')
[ "$(post "/tasks/$id/cancel" '')" = 200 ] || fail "cancel $id"
[ "$(post /tasks '{"work_duration": "1s", "delay": "1h"}')" = 202 ] || fail "a delayed task"
[ "$(post /queues/fast/pause '')" = 200 ] || fail "pause"
[ "$(post /tasks '{"work_duration": "nonsense"}')" = 400 ] || fail "a bad request"

for state in succeeded failed cancelled; do
    wait_sample "bgtasks_tasks_finished_total{state=\"$state\"}" 1
done
wait_sample 'bgtasks_tasks_rejected_total' 1
wait_sample 'bgtasks_schedule_firings_total{schedule="tick", outcome="created"}' 2

curl -s "$url/metrics" >"$WORK/metrics.txt"
echo "== /metrics after every outcome ($(grep -vc '^#' "$WORK/metrics.txt") samples):"
grep -v '^#' "$WORK/metrics.txt"
echo "== promtool check metrics:"
status=0
promtool check metrics <"$WORK/metrics.txt" >"$WORK/promtool.txt" 2>&1 || status=$?
cat "$WORK/promtool.txt"
if [ "$status" -ne 0 ] || [ -s "$WORK/promtool.txt" ]; then
    fail "promtool check metrics complained (exit $status)"
fi
echo "(nothing: promtool is satisfied)"
stop_bgtasks metrics
