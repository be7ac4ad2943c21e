"""Holds src/openapi.json to the answers Schemathesis cannot provoke.

Run by tests/ecosystem/schemathesis.sh as `openapi_answers.py BIN`. A fuzzer
never fills a queue, evicts a record, cancels a task twice on purpose or
catches the server shutting down; this script does each on purpose and
checks the status, the headers the document requires, and the body
against the document's schema for that operation and status (with
jsonschema_rs, which Schemathesis brings). Standard library otherwise.
"""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import jsonschema_rs

BIN = sys.argv[1]
HERE = os.path.dirname(os.path.abspath(__file__))
DOC = json.load(open(os.path.join(HERE, "..", "..", "src", "openapi.json")))
checked = []


def fail(message):
    raise SystemExit(f"FAIL: {message}")


def resolve(obj, kind):
    """Follows a `$ref` to components/<kind>."""
    if "$ref" in obj:
        return DOC["components"][kind][obj["$ref"].rsplit("/", 1)[1]]
    return obj


def check(answer, path, method, status):
    """Checks an answer against the document's response for it."""
    got, headers, body = answer
    if got != status:
        fail(f"{method.upper()} {path}: expected {status}, got {got} {body!r}")
    responses = DOC["paths"][path][method]["responses"]
    if str(status) not in responses:
        fail(f"{method.upper()} {path} {status} is not in the document")
    response = resolve(responses[str(status)], "responses")
    for name, header in response.get("headers", {}).items():
        header = resolve(header, "headers")
        value = headers.get(name.lower())
        if value is None:
            if header.get("required"):
                fail(f"{method.upper()} {path} {status}: no {name}")
            continue
        schema = header["schema"]
        if schema.get("type") == "integer":
            value = int(value)
        validate({**DOC, **schema}, value, f"{method.upper()} {path} {status} {name}")
    content = response.get("content", {})
    if method != "head" and "application/json" in content:
        schema = content["application/json"]["schema"]
        # The whole document beside the schema, so that its `#/components`
        # references resolve; the document's own keys are no keywords.
        validate({**DOC, **schema}, json.loads(body), f"{method.upper()} {path} {status}")
    checked.append(f"{method.upper()} {path} {status}")


def validate(schema, instance, what):
    errors = [e.message for e in jsonschema_rs.validator_for(schema).iter_errors(instance)]
    if errors:
        fail(f"{what}: {errors[0]}: {instance!r}")


class Server:
    """bgtasks on a port the kernel picks."""

    def __init__(self, *flags):
        fd, self.stderr_path = tempfile.mkstemp(prefix="bgtasks-openapi-answers-")
        with os.fdopen(fd, "w") as log:
            self.process = subprocess.Popen(
                [BIN, "--addr", "127.0.0.1:0", "--log-level", "info", *flags],
                stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 60
        while True:
            found = re.search(r"listening on http://(\S+)", open(self.stderr_path).read())
            if found:
                self.host, port = found.group(1).rsplit(":", 1)
                self.port = int(port)
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                fail(f"bgtasks {flags} did not start: {open(self.stderr_path).read()}")
            time.sleep(0.05)

    def connection(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=60)

    def request(self, method, path, body=None, headers=None, conn=None):
        own = conn is None
        conn = conn or self.connection()
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        if own:
            conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, raw

    def wait_state(self, task, state):
        deadline = time.monotonic() + 60
        while json.loads(self.request("GET", f"/tasks/{task}")[2])["state"] != state:
            if time.monotonic() > deadline:
                fail(f"{task} never became {state}")
            time.sleep(0.02)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=60)
        os.unlink(self.stderr_path)


def main():
    server = Server("--workers", "1", "--buffer", "1", "--keep-finished", "1",
                    "--max-body", "1000", "--node", "n1")
    try:
        submit = lambda body, key=None: server.request(  # noqa: E731
            "POST", "/tasks", body, {"Idempotency-Key": key} if key else {})
        first = submit('{"work_duration": "0s"}')
        check(first, "/tasks", "post", 202)
        first = json.loads(first[2])["id"]
        server.wait_state(first, "succeeded")
        second = json.loads(submit('{"work_duration": "0s"}')[2])["id"]
        server.wait_state(second, "succeeded")
        # --keep-finished 1: the first record is gone, the second is final.
        check(server.request("GET", f"/tasks/{first}"), "/tasks/{id}", "get", 410)
        check(server.request("HEAD", f"/tasks/{first}"), "/tasks/{id}", "head", 410)
        check(server.request("POST", f"/tasks/{second}/cancel"), "/tasks/{id}/cancel", "post", 409)
        check(server.request("POST", f"/tasks/{second}/retry"), "/tasks/{id}/retry", "post", 409)
        check(server.request("POST", f"/tasks/{first}/retry"), "/tasks/{id}/retry", "post", 410)
        check(server.request("POST", "/tasks/n2_AAAAAAAAA/retry"), "/tasks/{id}/retry", "post", 404)
        check(server.request("GET", "/tasks/n2_AAAAAAAAA"), "/tasks/{id}", "get", 404)
        running = submit('{"work_duration": "60s"}', "key-1")
        check(running, "/tasks", "post", 202)
        server.wait_state(json.loads(running[2])["id"], "running")
        check(submit('{"work_duration": "60s"}', "key-1"), "/tasks", "post", 200)
        check(submit('{"work_duration": "61s"}', "key-1"), "/tasks", "post", 422)
        check(submit('{"work_duration": "60s"}'), "/tasks", "post", 202)
        check(submit('{"work_duration": "60s"}'), "/tasks", "post", 503)
        # Batches (SPEC §15): refused whole when the queue is full; delayed
        # tasks need no room; a key covers the batch; a bad item's index.
        check(submit('[{"work_duration": "60s"}]'), "/tasks", "post", 503)
        later = '[{"work_duration": "0s", "delay": "1h"}, {"work_duration": "0s", "delay": "2h"}]'
        check(submit(later, "key-2"), "/tasks", "post", 202)
        check(submit(later, "key-2"), "/tasks", "post", 200)
        check(submit('[{"work_duration": "0s", "delay": "1h"}]', "key-2"), "/tasks", "post", 422)
        check(submit('[{"work_duration": "0s"}, {"work_duration": "soon"}]'), "/tasks", "post", 400)
        check(server.request("POST", "/queue-task", '{"work_duration": "60s"}'),
              "/queue-task", "post", 503)
        check(server.request("POST", "/queue-task", "[]"), "/queue-task", "post", 400)
        check(submit("x" * 1001), "/tasks", "post", 413)
        check(server.request("POST", "/queues/nope/pause"), "/queues/{name}/pause", "post", 404)
        check(server.request("POST", "/queues/default/pause"), "/queues/{name}/pause", "post", 200)
        check(server.request("POST", "/queues/default/resume"), "/queues/{name}/resume", "post", 200)
        check(server.request("GET", "/tasks?state=running"), "/tasks", "get", 200)
        check(server.request("GET", "/tasks?limit=0"), "/tasks", "get", 400)
        check(server.request("GET", "/events?queue=nope"), "/events", "get", 400)
        allowed = server.request("DELETE", "/tasks")
        error = resolve(DOC["components"]["responses"]["MethodNotAllowed"], "responses")
        if allowed[0] != 405 or allowed[1].get("allow") != "GET, HEAD, POST":
            fail(f"DELETE /tasks: {allowed}")
        validate({**DOC, **error["content"]["application/json"]["schema"]},
                 json.loads(allowed[2]), "405")
        checked.append("DELETE /tasks 405 (Allow)")
        # Shutdown: keep-alive connections opened before it still get
        # answers, the 503s of a server shutting down (the 60 s task holds
        # the drain open, within --grace); each closes after its answer.
        polls, late = server.connection(), server.connection()
        for conn in (polls, late):
            check(server.request("GET", "/healthz", conn=conn), "/healthz", "get", 200)
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while True:
            health = server.request("GET", "/healthz", conn=polls)
            if health[0] == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        check(health, "/healthz", "get", 503)
        check(server.request("POST", "/tasks", '{"work_duration": "1s"}', conn=late),
              "/tasks", "post", 503)
    finally:
        server.stop()

    # Dependencies and retries: a waiting task, a retry refused by a full
    # queue, then accepted, repeated and misused with its key, and a task
    # after a cancelled one, cancelled at once.
    server = Server("--workers", "1", "--buffer", "1")
    try:
        submit = lambda body, key=None: server.request(  # noqa: E731
            "POST", "/tasks", body, {"Idempotency-Key": key} if key else {})
        head = json.loads(submit('{"work_duration": "60s"}')[2])["id"]
        server.wait_state(head, "running")
        queued = json.loads(submit('{"work_duration": "60s"}')[2])["id"]
        waiting = submit(json.dumps({"work_duration": "0s", "after": [head]}))
        check(waiting, "/tasks", "post", 202)
        waiting = json.loads(waiting[2])["id"]
        check(server.request("GET", f"/tasks/{waiting}"), "/tasks/{id}", "get", 200)
        check(server.request("POST", f"/tasks/{waiting}/cancel"), "/tasks/{id}/cancel", "post", 200)
        check(server.request("POST", f"/tasks/{waiting}/retry"), "/tasks/{id}/retry", "post", 503)
        check(server.request("POST", f"/tasks/{queued}/cancel"), "/tasks/{id}/cancel", "post", 200)
        check(server.request("POST", f"/tasks/{head}/cancel"), "/tasks/{id}/cancel", "post", 200)
        key = {"Idempotency-Key": "retry-1"}
        deadline = time.monotonic() + 60
        # The worker frees the cancelled task's place when it takes it.
        while (retried := server.request("POST", f"/tasks/{waiting}/retry", headers=key))[0] == 503:
            if time.monotonic() > deadline:
                fail("the queue never had room")
            time.sleep(0.02)
        check(retried, "/tasks/{id}/retry", "post", 202)
        check(server.request("POST", f"/tasks/{waiting}/retry", headers=key), "/tasks/{id}/retry", "post", 200)
        check(server.request("POST", f"/tasks/{head}/retry", headers=key), "/tasks/{id}/retry", "post", 422)
        check(server.request("GET", f"/tasks/{json.loads(retried[2])['id']}"), "/tasks/{id}", "get", 200)
        late = submit(json.dumps({"work_duration": "0s", "after": [head]}))
        check(late, "/tasks", "post", 202)
        if json.loads(late[2])["state"] != "cancelled":
            fail(f"a task after a cancelled one: {late}")
        check(server.request("GET", f"/tasks/{json.loads(late[2])['id']}"), "/tasks/{id}", "get", 200)
    finally:
        server.stop()

    server = Server("--token", "secret")
    try:
        for path, method in [("/tasks", "get"), ("/tasks/{id}", "get"), ("/queues", "get"),
                             ("/metrics", "get"), ("/openapi.json", "get"), ("/tasks", "post")]:
            check(server.request(method.upper(), path.replace("{id}", "AAAAAAAAA")), path, method, 401)
        check(server.request("GET", "/healthz"), "/healthz", "get", 200)
        dashboard = server.request("GET", "/")
        check(dashboard, "/", "get", 200)
        check(server.request("GET", "/openapi.json", headers={"Authorization": "Bearer secret"}),
              "/openapi.json", "get", 200)
    finally:
        server.stop()
    print(f"{len(checked)} answers Schemathesis cannot provoke match the document: "
          + ", ".join(checked))


main()
