# Helpers the scripts of tests/ecosystem source: a scratch directory, the
# binary, servers started on ports the kernel picks, and installing a tool
# when it is missing. Every server a script starts is killed when it exits,
# whatever happened.

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bgtasks-ecosystem.XXXXXX")
declare -A PIDS=() ADDRS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    for pid in "${EXTRA_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
EXTRA_PIDS=()
trap cleanup EXIT

# Fails the script with a message.
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# Sets BIN to the release binary, building it unless BGTASKS_BIN names one
# (a no-op when .ci/run's cargo test --release has just built it).
build_bgtasks() {
    if [ -n "${BGTASKS_BIN:-}" ]; then
        BIN=$BGTASKS_BIN
    else
        cargo build --release --quiet
        BIN=$PWD/target/release/bgtasks
    fi
}

# Installs Debian packages when a command is missing: need_apt CMD PKG...
need_apt() {
    local cmd=$1
    shift
    command -v "$cmd" >/dev/null && return
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Starts bgtasks as NAME on a port the kernel picks, with the flags that
# follow, and waits until it listens.
start_bgtasks() {
    local name=$1
    shift
    "$BIN" --addr 127.0.0.1:0 --log-level info "$@" 2>"$WORK/$name.log" &
    PIDS[$name]=$!
    local i line
    for i in $(seq 600); do
        line=$(grep -m1 -o 'listening on http://[0-9.:]*' "$WORK/$name.log" || true)
        if [ -n "$line" ]; then
            ADDRS[$name]=${line#listening on http://}
            return
        fi
        kill -0 "${PIDS[$name]}" 2>/dev/null || { cat "$WORK/$name.log"; fail "$name did not start"; }
        sleep 0.1
    done
    fail "$name did not listen within 60 s"
}

# Prints the base URL of server NAME.
server_url() {
    echo "http://${ADDRS[$1]}"
}

# Stops server NAME with SIGTERM and waits for it to exit.
stop_bgtasks() {
    kill -TERM "${PIDS[$1]}" 2>/dev/null || true
    wait "${PIDS[$1]}" 2>/dev/null || true
    unset "PIDS[$1]"
}

# Kills server NAME with SIGKILL, as a crash would.
kill_bgtasks() {
    kill -KILL "${PIDS[$1]}" 2>/dev/null || true
    wait "${PIDS[$1]}" 2>/dev/null || true
    unset "PIDS[$1]"
}
