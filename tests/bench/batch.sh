#!/usr/bin/env bash
# The `batch` phase of issue 27: tasks per second POSTed one a request
# (../shared/bench/queue-task.lua) beside tasks per second POSTed in
# batches of BATCH (../shared/bench/queue-batch.lua), in the same sitting,
# against the same binary and flags — in memory, then with --data-dir —
# and bytes per queued task at rest, enqueued one by one and in batches.
#
# Usage, from the project root, with the shared bench's port free:
#   cargo build --release
#   flock /tmp/bench.lock bash tests/bench/batch.sh
# Env: BENCH (../shared/bench), BIN (target/release/bgtasks), PORT (18070),
#      ROUNDS (3), DURATION (10s), BATCH (100), MEM_COUNT (100000; 0 skips it),
#      BUFFER (5000000: room for every task a run sends, so that no batch
#      meets a full queue and the figure is the 202 path's, not how fast
#      128 workers drain it; check non-2xx stays 0).
# Rounds alternate single and batch runs so drift hits both alike; the
# ratio is taken per round, and its median printed.
set -euo pipefail
BENCH=${BENCH:-$(cd "$(dirname "$0")/../../../shared/bench" 2>/dev/null && pwd || echo /work/shared/bench)}
BIN=${BIN:-target/release/bgtasks}
PORT=${PORT:-18070}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
export BATCH=${BATCH:-100}
MEM_COUNT=${MEM_COUNT:-100000}
BUFFER=${BUFFER:-5000000}
WORK=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
PID=

# Starts the server with extra flags and waits until it answers.
start() {
    "$BIN" --addr "127.0.0.1:$PORT" --log-level warn "$@" 2>>"$WORK/server.log" &
    PID=$!
    for _ in $(seq 500); do
        curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && return
        sleep 0.01
    done
    echo "the server did not start" >&2
    exit 1
}

# Stops the server.
stop() {
    kill "$PID"
    wait "$PID" || true
}

# One wrk run of a script at a path; prints its ANCHOR_JSON summary.
run_wrk() {
    wrk -t1 -c64 -d"$DURATION" -s "$BENCH/$1" "http://127.0.0.1:$PORT$2" | sed -n 's/^ANCHOR_JSON //p'
}

# Tasks per second of one run, single or batch, with extra server flags.
rate() {
    local kind=$1; shift
    local data=()
    if [ "$kind" = single-disk ] || [ "$kind" = batch-disk ]; then
        rm -rf "$WORK/data"
        data=(--data-dir "$WORK/data")
    fi
    start --workers 128 --buffer "$BUFFER" "${data[@]}"
    case $kind in
        single*) json=$(WORK_DURATION=0s run_wrk queue-task.lua /queue-task) ;;
        batch*) json=$(WORK_DURATION=0s run_wrk queue-batch.lua /tasks) ;;
    esac
    stop
    python3 - "$json" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
# queue-task.lua counts requests; queue-batch.lua counts 2xx tasks.
tasks = r.get("tasks_per_s", r["rps"] * (1 - r["non2xx"] / max(r["requests"], 1)))
print(f"{tasks:.0f} {r['non2xx']}")
PY
}

for where in mem disk; do
    ratios=()
    for round in $(seq "$ROUNDS"); do
        read -r single single_bad < <(rate "single-$where")
        read -r batch batch_bad < <(rate "batch-$where")
        ratio=$(python3 -c "print(f'{$batch / $single:.1f}')")
        ratios+=("$ratio")
        echo "$where round $round: accept $single tasks/s (non-2xx $single_bad), batch of $BATCH $batch tasks/s (non-2xx $batch_bad): ${ratio}x"
    done
    echo "$where: median batch/accept ratio $(printf '%s\n' "${ratios[@]}" | sort -g | sed -n "$(( (ROUNDS + 1) / 2 ))p")x"
done

# Bytes per task at rest: MEM_COUNT 60s tasks behind one worker, enqueued
# one a request and then in batches.
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
[ "$MEM_COUNT" -gt 0 ] || exit 0
for how in single batch; do
    start --workers 1 --buffer $((MEM_COUNT * 2))
    before=$(rss)
    python3 - "$PORT" "$MEM_COUNT" "$how" "$BATCH" <<'PY'
import http.client, json, sys
port, count, how, size = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
conn = http.client.HTTPConnection("127.0.0.1", port)
sent = 0
while sent < count:
    n = 1 if how == "single" else min(size, count - sent)
    items = [{"task_id": "task-%07d" % (sent + i), "work_duration": "60s"} for i in range(n)]
    body = json.dumps(items[0] if how == "single" else items)
    conn.request("POST", "/queue-task" if how == "single" else "/tasks", body)
    r = conn.getresponse(); r.read()
    assert r.status == 202, r.status
    sent += n
PY
    after=$(rss)
    echo "mem $how: $MEM_COUNT queued 60s tasks, RSS $before -> $after KiB: $(( (after - before) * 1024 / MEM_COUNT )) bytes/task"
    stop
done
