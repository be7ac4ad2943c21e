"""Three bgtasks servers behind real nginx, configured by tests/nginx/bgtasks.conf.

Run by tests/ecosystem/nginx.sh as `nginx.py BIN WORKDIR`. The servers run
with --node a|b|c, --workers 1 and --buffer 2, so each holds 3 tasks of 60 s
(1 running, 2 queued) and then answers 503. Through nginx:
1. 30 submissions get 9 × 202, 3 on each server, and then only 503s, each
   after nginx tried every server; by the first 503 every server is full.
2. Every id's status, long poll and cancel reach the server that owns it
   (the same answer as from the owner directly; the others do not know it).
3. With one server killed, new submissions go to the other two.
Prints the counts. Standard library only.
"""

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

BIN, WORK = sys.argv[1], sys.argv[2]
NODES = "abc"
PER_SERVER = 3  # --workers 1 running + --buffer 2 queued
PATIENCE = 60.0  # a liveness bound, far above what any step takes
BUSY = [{"error": "workers are busy, try again later"},
        {"error": "no server can take the task now, try again later"}]

processes = []


def fail(message):
    raise SystemExit(f"FAIL: {message}")


def eventually(what, check):
    """Polls check() until it returns something true; fails after PATIENCE."""
    deadline = time.monotonic() + PATIENCE
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            fail(f"never: {what}")
        time.sleep(0.05)


def request(addr, method, path, body=None):
    """One request on a new connection: (status, headers, parsed body)."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=75)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed
    finally:
        conn.close()


def start_bgtasks(node):
    """Starts one server; returns its address once it listens."""
    log_path = os.path.join(WORK, f"bgtasks-{node}.log")
    log = open(log_path, "w")
    args = [BIN, "--addr", "127.0.0.1:0", "--node", node, "--workers", "1",
            "--buffer", "2", "--log-level", "info"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    processes.append(process)

    def listening():
        if process.poll() is not None:
            fail(f"bgtasks --node {node} exited: {open(log_path).read()}")
        found = re.search(r"listening on http://(\S+)", open(log_path).read())
        return found and found.group(1)

    return process, eventually(f"bgtasks --node {node} to listen", listening)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(servers):
    """Renders the README's configuration with these ports and runs nginx in
    the foreground with its files in WORK; returns its address."""
    here = os.path.dirname(os.path.abspath(__file__))
    template = open(os.path.join(here, "..", "nginx", "bgtasks.conf")).read()
    port = free_port()
    conf = template
    for i, node in enumerate(NODES):
        placeholder = f"server 127.0.0.1:800{i + 1}"
        if conf.count(placeholder) != 2:
            fail(f"'{placeholder}' should appear twice in bgtasks.conf")
        conf = conf.replace(placeholder, f"server {servers[node]}")
    if conf.count("listen 127.0.0.1:8000;") != 1:
        fail("bgtasks.conf should listen on 127.0.0.1:8000")
    conf = conf.replace("listen 127.0.0.1:8000;", f"listen 127.0.0.1:{port};")
    open(os.path.join(WORK, "bgtasks.conf"), "w").write(conf)
    for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]:
        os.makedirs(os.path.join(WORK, temp), exist_ok=True)
    main = f"""
daemon off;
master_process off;
pid {WORK}/nginx.pid;
error_log {WORK}/nginx-error.log warn;
events {{ worker_connections 512; }}
http {{
    log_format upstreams '$request_method $uri $status [$upstream_addr] [$upstream_status]';
    access_log {WORK}/nginx-access.log upstreams;
    client_body_temp_path {WORK}/client_body;
    proxy_temp_path {WORK}/proxy;
    fastcgi_temp_path {WORK}/fastcgi;
    uwsgi_temp_path {WORK}/uwsgi;
    scgi_temp_path {WORK}/scgi;
    include {WORK}/bgtasks.conf;
}}
"""
    conf_path = os.path.join(WORK, "nginx.conf")
    open(conf_path, "w").write(main)
    base = ["nginx", "-p", WORK, "-e", f"{WORK}/nginx-error.log", "-c", conf_path]
    checked = subprocess.run(base + ["-t", "-q"], capture_output=True, text=True)
    if checked.returncode != 0:
        fail(f"nginx -t: {checked.stderr}")
    process = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    processes.append(process)
    addr = f"127.0.0.1:{port}"

    def answering():
        if process.poll() is not None:
            fail(f"nginx exited: {open(os.path.join(WORK, 'nginx-error.log')).read()}")
        try:
            return request(addr, "GET", "/healthz")[0] == 200
        except OSError:
            return False

    eventually("nginx to answer", answering)
    return addr


def submit_all(proxy, servers, count, label):
    """Submits `count` 60 s tasks through nginx, alternating the two routes.
    Waits for the first task on each server to be running, so that each
    server holds exactly 1 running + 2 queued. Returns (statuses, ids)."""
    statuses, ids, started = [], [], set()
    for i in range(count):
        route = "/tasks" if i % 2 == 0 else "/queue-task"
        body = json.dumps({"task_id": f"{label}-{i}", "work_duration": "60s"})
        status, headers, answer = request(proxy, "POST", route, body)
        statuses.append(status)
        if status == 202:
            task = answer["id"]
            node = task.split("_", 1)[0]
            if headers.get("location") != f"/tasks/{task}":
                fail(f"Location {headers.get('location')} for {task}")
            ids.append(task)
            if node not in started:
                started.add(node)
                eventually(f"{task} to run", lambda: request(
                    servers[node], "GET", f"/tasks/{task}")[2]["state"] == "running")
        elif status == 503:
            # From a full bgtasks, or from nginx when the last server it
            # tried was down (bgtasks.conf's @unavailable).
            if answer not in BUSY or "retry-after" not in headers:
                fail(f"a 503 that is not 'queue full': {headers} {answer}")
        else:
            fail(f"submission {i} through nginx: {status} {answer}")
    return statuses, ids


def by_node(ids):
    return {node: sum(1 for t in ids if t.startswith(node + "_")) for node in NODES}


def full(addr):
    queue = request(addr, "GET", "/queues")[2]["queues"][0]
    return queue["busy"] == 1 and queue["depth"] == queue["capacity"] == 2


def main():
    servers, pids = {}, {}
    for node in NODES:
        process, addr = start_bgtasks(node)
        servers[node], pids[node] = addr, process
    proxy = start_nginx(servers)

    # 1. 30 submissions: 202 while any server has room, then only 503.
    statuses, ids = submit_all(proxy, servers, 30, "first")
    accepted = statuses.count(202)
    first_503 = statuses.index(503) if 503 in statuses else len(statuses)
    if accepted != PER_SERVER * len(NODES) or first_503 != accepted:
        fail(f"expected 9 × 202 and then only 503: {statuses}")
    if by_node(ids) != {node: PER_SERVER for node in NODES}:
        fail(f"tasks did not land 3 on each server: {ids}")
    for node in NODES:
        if not full(servers[node]):
            fail(f"a 503 while {node} has room: {request(servers[node], 'GET', '/queues')}")
    log = open(os.path.join(WORK, "nginx-access.log")).read().splitlines()
    refused = [line for line in log if line.startswith("POST ") and " 503 " in line]
    tried_all = [line for line in refused if line.endswith("[503, 503, 503]")]
    if len(refused) != 30 - accepted or len(tried_all) != len(refused):
        fail("each 503 should come after all three servers refused:\n" + "\n".join(refused))
    print(f"30 submissions through nginx: {accepted} × 202 "
          f"({', '.join(f'{n}: {c}' for n, c in by_node(ids).items())}), "
          f"then {30 - accepted} × 503, each after all 3 servers refused")

    # 2. Status, long poll and cancel of every id reach its owner.
    def check_id(task):
        node = task.split("_", 1)[0]
        direct = request(servers[node], "GET", f"/tasks/{task}")
        through = request(proxy, "GET", f"/tasks/{task}")
        if through[0] != 200 or through[2]["id"] != task or \
                through[2]["created_at"] != direct[2]["created_at"]:
            fail(f"status of {task}: through nginx {through}, directly {direct}")
        polled = request(proxy, "GET", f"/tasks/{task}?wait=1s")
        if polled[0] != 200 or polled[2]["id"] != task:
            fail(f"long poll of {task}: {polled}")
        for other in NODES:
            if other != node and request(servers[other], "GET", f"/tasks/{task}")[0] != 404:
                fail(f"{other} knows {task}")
        return task

    with ThreadPoolExecutor(len(ids)) as pool:
        list(pool.map(check_id, ids))
    for path in ["/tasks", "/tasks/"]:
        status, _, answer = request(proxy, "GET", path)
        if status != 200 or "tasks" not in answer:
            fail(f"the list {path} through nginx: {status} {answer}")
    for path in ["/tasks/z_AAAAAAAAA", "/tasks/AAAAAAAAA", f"/tasks/a_{ids[0][-9:]}x"]:
        status, _, answer = request(proxy, "GET", path)
        if status != 404 or answer != {"error": "task not found"}:
            fail(f"{path} through nginx: {status} {answer}")
    cancelled = 0
    for task in ids:
        if task.startswith("b_"):
            continue
        status, _, answer = request(proxy, "POST", f"/tasks/{task}/cancel")
        node = task.split("_", 1)[0]
        owner = request(servers[node], "GET", f"/tasks/{task}")[2]
        if status != 200 or answer["state"] != "cancelled" or owner["state"] != "cancelled":
            fail(f"cancel {task} through nginx: {status} {answer}; owner says {owner}")
        again = request(proxy, "POST", f"/tasks/{task}/cancel")
        if again[0] != 409 or again[2]["id"] != task:
            fail(f"cancelling {task} again through nginx: {again}")
        cancelled += 1
    print(f"{len(ids)} ids: status, long poll (?wait=1s) and cancel through nginx reached "
          f"the owner ({len(ids)} status, {len(ids)} long polls, {cancelled} cancels, "
          f"{cancelled} repeated cancels answered 409)")

    # Everything else answers from one server, the event stream included.
    for path in ["/healthz", "/metrics", "/queues", "/schedules", "/openapi.json", "/"]:
        status = request(proxy, "GET", path)[0]
        if status != 200:
            fail(f"GET {path} through nginx: {status}")
    host, port = proxy.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=PATIENCE) as stream:
        stream.sendall(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        seen = b""
        while b"event: stats" not in seen:
            chunk = stream.recv(4096)
            if not chunk:
                fail(f"the event stream through nginx ended: {seen!r}")
            seen += chunk
    print("/healthz, /metrics, /queues, /schedules, /openapi.json, / and the /events "
          "stream answer through nginx")

    # 3. b dies; a and c have room again; nginx moves on past b.
    pids["b"].send_signal(signal.SIGKILL)
    pids["b"].wait()
    for node in "ac":
        eventually(f"{node} to have room", lambda node=node: request(
            servers[node], "GET", "/queues")[2]["queues"][0]["depth"] == 0)
    statuses, new_ids = submit_all(proxy, servers, 8, "after")
    counts = by_node(new_ids)
    if statuses != [202] * 6 + [503] * 2 or counts != {"a": 3, "b": 0, "c": 3}:
        fail(f"with b killed: {statuses} {new_ids}")
    lost = request(proxy, "GET", f"/tasks/{next(t for t in ids if t.startswith('b_'))}")[0]
    print(f"b killed: 8 submissions through nginx: 6 × 202 (a: {counts['a']}, c: {counts['c']}), "
          f"then 2 × 503, none to b; b's tasks through nginx: {lost}")


try:
    main()
finally:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
