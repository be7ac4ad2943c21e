#!/usr/bin/env python3
"""A mixed soak load for bgtasks, and a sampler of the server's RSS.

Made for issue 13 §3: does RSS creep under a long mixed load because of a
leak, or because the allocator settles? It runs, for --duration seconds,
against a server started like this (the flags the issue's soak used, plus
a second queue, a failing handler and a schedule, so every path that keeps
state is exercised):

    bgtasks --addr 127.0.0.1:PORT --workers 8 --buffer 1000 \\
        --keep-finished 1000 --queue slow=2/100 \\
        --handler fail=tests/soak/flaky.sh \\
        --schedule 'tick=@every 5s {"work_duration":"10ms"}'

    python3 tests/soak/soak.py --addr 127.0.0.1:PORT --duration 1800 \\
        --pid SERVER_PID

To see where the heap goes, start the server under `heaptrack` and pass
the pid of the bgtasks process itself (heaptrack's child), not heaptrack's;
stop it with SIGTERM, then `heaptrack_print` gives the peak and what is
left at exit, and tests/soak/heap_by_minute.py what is live minute by minute.

The load, each part in its own thread at its own pace (standard library
only, raw HTTP/1.1 over keep-alive sockets):
- submissions (--rate a second): mostly `sleep` tasks of 0s–50ms; some
  delayed by 1–20 s; some into the queue `slow`; some with an
  Idempotency-Key (new, repeated with the same body, or reused with a
  different body: 422); some of kind `fail` (tests/soak/flaky.sh) with 1–3
  attempts; some with long labels; a few malformed (400);
- cancels of recent tasks (200, 409, 410) and of unknown ids (404);
- long polls (`?wait=`) on recent tasks;
- list pages that follow `next`, with and without filters;
- `/metrics`, `/queues`, `/schedules`, `/healthz`, `/`, an unknown path,
  and pipelined requests;
- one `/events` subscriber that stays, and one that comes and goes (and
  sometimes stops reading until it is told it lagged);
- abandoned connections: half a request then close; connect and close;
  a whole request then close before reading the answer.

With --pid it reads VmRSS from /proc/PID/status at the start and every
--sample seconds, and prints the series (KiB) at the end with the totals
of requests by kind and status.
"""

import argparse
import collections
import json
import random
import socket
import threading
import time

COUNTS = collections.Counter()
COUNTS_LOCK = threading.Lock()
RECENT = collections.deque(maxlen=2000)
SCHEDULED = collections.deque(maxlen=500)
KEYS = collections.deque(maxlen=500)
STOP = threading.Event()


def count(kind, status=None):
    """Counts one request of `kind` and, if given, its status."""
    with COUNTS_LOCK:
        COUNTS[kind] += 1
        if status is not None:
            COUNTS[f"{kind} {status}"] += 1


class Conn:
    """A keep-alive HTTP/1.1 connection that reconnects after any failure."""

    def __init__(self, addr):
        self.addr = addr
        self.sock = None
        self.buf = b""

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.buf = b""

    def request(self, method, path, body=None, headers=()):
        """Sends one request and returns (status, headers, body), or None."""
        data = self.encode(method, path, body, headers)
        for _ in range(2):
            try:
                if self.sock is None:
                    self.sock = socket.create_connection(self.addr, timeout=90)
                self.sock.sendall(data)
                return self.read_response(method == "HEAD")
            except (OSError, ValueError):
                count("reconnect")
                self.close()
        count("failed request")
        return None

    @staticmethod
    def encode(method, path, body=None, headers=()):
        head = f"{method} {path} HTTP/1.1\r\nHost: soak\r\n"
        for name, value in headers:
            head += f"{name}: {value}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return head.encode() + b"\r\n" + (body or b"")

    def read_response(self, head_only=False):
        while b"\r\n\r\n" not in self.buf:
            self.fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self.fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ValueError("connection closed")
        self.buf += chunk


def paced(rate, step):
    """Calls step() about `rate` times a second until the soak ends."""
    interval = 1.0 / rate
    next_at = time.monotonic()
    while not STOP.is_set():
        step()
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            STOP.wait(delay)
        elif delay < -1:
            next_at = time.monotonic()


def submission():
    """Returns one submission's (body, headers, kind) from the mix."""
    r = random.random()
    ms = random.choice([0, 0, 1, 5, 10, 20, 50, random.randint(0, 50)])
    task = {"task_id": f"soak-{random.randint(0, 99)}", "work_duration": f"{ms}ms"}
    headers = []
    if r < 0.60:
        kind = "sleep"
    elif r < 0.70:
        kind = "delayed"
        task["delay"] = f"{random.uniform(1, 20):.3f}s"
    elif r < 0.78:
        kind = "slow queue"
        task["queue"] = "slow"
    elif r < 0.88:
        kind = "idempotent"
        roll = random.random()
        if KEYS and roll < 0.4:
            key, body = random.choice(KEYS)
            return body, [("Idempotency-Key", key)], "idempotent repeat"
        if KEYS and roll < 0.5:
            key, _ = random.choice(KEYS)
            task["task_id"] = "a different body"
            return json.dumps(task).encode(), [("Idempotency-Key", key)], "idempotent conflict"
        key = f"soak-key-{random.getrandbits(64):016x}"
        body = json.dumps(task).encode()
        KEYS.append((key, body))
        return body, [("Idempotency-Key", key)], "idempotent new"
    elif r < 0.92:
        kind = "fail handler"
        task = {
            "task_id": "flaky",
            "kind": "fail",
            "max_attempts": random.randint(1, 3),
            "payload": {"n": random.randint(0, 1000), "pad": "x" * random.randint(0, 300)},
            "timeout": "10s",
        }
    elif r < 0.98:
        kind = "long label"
        task["task_id"] = "L" * random.randint(23, 4000)
    else:
        kind = "malformed"
        task["work_duration"] = random.choice(["-1s", "forever", 5])
    return json.dumps(task).encode(), headers, kind


def submitter(addr, rate):
    conn = Conn(addr)

    def step():
        body, headers, kind = submission()
        route = "/queue-task" if random.random() < 0.1 else "/tasks"
        got = conn.request("POST", route, body, headers)
        if got is None:
            return
        status, _, answer = got
        count("submissions")
        count("submit " + kind, status)
        if status in (200, 202):
            reply = json.loads(answer)
            RECENT.append(reply["id"])
            if reply["state"] == "scheduled":
                SCHEDULED.append(reply["id"])

    paced(rate, step)


def canceller(addr, rate):
    conn = Conn(addr)

    def step():
        r = random.random()
        if r < 0.3 and SCHEDULED:
            task = random.choice(SCHEDULED)
        elif r < 0.95 and RECENT:
            task = random.choice(RECENT)
        else:
            task = "AAAAAAAAA"
        got = conn.request("POST", f"/tasks/{task}/cancel")
        if got:
            count("cancel", got[0])

    paced(rate, step)


def long_poller(addr, rate):
    conn = Conn(addr)

    def step():
        pool = SCHEDULED if random.random() < 0.3 else RECENT
        if not pool:
            return
        task = pool[-1] if random.random() < 0.5 else random.choice(pool)
        wait = random.choice(["200ms", "1s", "2s", "5s"])
        got = conn.request("GET", f"/tasks/{task}?wait={wait}")
        if got:
            count("long poll", got[0])

    paced(rate, step)


def lister(addr, rate):
    conn = Conn(addr)
    filters = ["", "state=succeeded&", "queue=slow&", "task_id=flaky&", "state=scheduled&"]

    def step():
        path = f"/tasks?{random.choice(filters)}limit={random.choice([10, 50, 100, 400])}"
        for _ in range(random.randint(1, 4)):
            got = conn.request("GET", path)
            if not got:
                return
            count("list page", got[0])
            if got[0] != 200:
                return
            path = json.loads(got[2]).get("next")
            if not path:
                return

    paced(rate, step)


def prober(addr, rate):
    conn = Conn(addr)
    paths = ["/metrics"] * 4 + ["/queues", "/schedules", "/healthz", "/", "/no-such-path"]

    def step():
        r = random.random()
        if r < 0.05:
            conn.request("POST", "/queues/slow/pause")
            count("pause/resume")
            time.sleep(0.2)
            conn.request("POST", "/queues/slow/resume")
            count("pause/resume")
        elif r < 0.15:
            pipelined(addr)
        else:
            path = random.choice(paths)
            got = conn.request(random.choice(["GET"] * 5 + ["HEAD"]), path)
            if got:
                count("probe " + path, got[0])

    paced(rate, step)


def pipelined(addr):
    """Sends three requests in one write and reads the three answers."""
    conn = Conn(addr)
    try:
        conn.sock = socket.create_connection(addr, timeout=30)
        data = b"".join(Conn.encode("GET", p) for p in ["/healthz", "/queues", "/metrics"])
        conn.sock.sendall(data)
        for _ in range(3):
            conn.read_response()
        count("pipelined batch")
    except (OSError, ValueError):
        count("pipelined failure")
    finally:
        conn.close()


def event_stream(addr, path, read_for, stall=0.0):
    """Reads an event stream for `read_for` seconds (after an optional
    stall without reading); returns whether the server ended it."""
    sock = socket.create_connection(addr, timeout=30)
    try:
        sock.sendall(Conn.encode("GET", path))
        if stall:
            STOP.wait(stall)
        end = time.monotonic() + read_for
        while time.monotonic() < end and not STOP.is_set():
            chunk = sock.recv(65536)
            if not chunk:
                return True
            with COUNTS_LOCK:
                COUNTS["event bytes"] += len(chunk)
                COUNTS["events"] += chunk.count(b"event: ")
                COUNTS["events lagged"] += chunk.count(b"event: lagged")
        return False
    finally:
        sock.close()


def steady_subscriber(addr):
    while not STOP.is_set():
        count("events subscribe (steady)")
        try:
            event_stream(addr, "/events", 1e9)
        except OSError:
            count("events failure")
            STOP.wait(1)


def passing_subscriber(addr):
    paths = ["/events", "/events?queue=slow", "/events?kind=fail", "/events?task_id=flaky"]
    while not STOP.is_set():
        count("events subscribe (passing)")
        stall = 20.0 if random.random() < 0.1 else 0.0
        try:
            event_stream(addr, random.choice(paths), random.uniform(0.5, 8), stall)
        except OSError:
            count("events failure")
        STOP.wait(random.uniform(0.2, 3))


def abandoner(addr, rate):
    def step():
        r = random.random()
        try:
            sock = socket.create_connection(addr, timeout=10)
            if r < 0.33:
                kind = "abandon half request"
                sock.sendall(b'POST /tasks HTTP/1.1\r\nHost: soak\r\nContent-Length: 40\r\n\r\n{"task')
            elif r < 0.66:
                kind = "abandon connect"
            else:
                kind = "abandon unread answer"
                sock.sendall(Conn.encode("GET", random.choice(["/metrics", "/tasks?limit=200"])))
            sock.close()
            count(kind)
        except OSError:
            count("abandon failure")

    paced(rate, step)


def rss_kib(pid):
    """Returns the VmRSS of `pid` in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError("no VmRSS")


def cpu_seconds(pid):
    """Returns the user+system CPU seconds `pid` used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--addr", default="127.0.0.1:8000")
    parser.add_argument("--duration", type=float, default=1800)
    parser.add_argument("--rate", type=float, default=250, help="submissions a second")
    parser.add_argument("--pid", type=int, help="server pid whose VmRSS to sample")
    parser.add_argument("--sample", type=float, default=60, help="seconds between samples")
    args = parser.parse_args()
    host, port = args.addr.rsplit(":", 1)
    addr = (host, int(port))
    rate = args.rate
    lanes = [
        (submitter, (addr, rate)),
        (canceller, (addr, rate * 0.13)),
        (long_poller, (addr, 2)),
        (long_poller, (addr, 2)),
        (long_poller, (addr, 2)),
        (lister, (addr, 2)),
        (prober, (addr, 4)),
        (abandoner, (addr, 10)),
        (steady_subscriber, (addr,)),
        (passing_subscriber, (addr,)),
    ]
    threads = [threading.Thread(target=f, args=a, daemon=True) for f, a in lanes]
    start = time.monotonic()
    for t in threads:
        t.start()
    series = []

    def sample():
        elapsed = time.monotonic() - start
        line = f"t={elapsed:7.0f}s"
        if args.pid:
            kib = rss_kib(args.pid)
            series.append((round(elapsed), kib))
            line += f" VmRSS={kib} KiB server_cpu={cpu_seconds(args.pid):.1f}s"
        print(f"{line} submissions={COUNTS['submissions']}", flush=True)

    sample()
    next_sample = start + args.sample
    end = start + args.duration
    while time.monotonic() < end:
        time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
        if time.monotonic() >= next_sample:
            sample()
            next_sample += args.sample
    STOP.set()
    for t in threads:
        t.join(timeout=10)
    if args.pid and (not series or series[-1][0] < round(args.duration)):
        sample()
    print("\nVmRSS series (s, KiB):")
    for elapsed, kib in series:
        print(f"{elapsed:6d} {kib:8d}")
    print("\nrequests by kind and status:")
    for key in sorted(COUNTS):
        print(f"{COUNTS[key]:10d}  {key}")


if __name__ == "__main__":
    main()
