// The dashboard (SPEC §11, `GET /`) in a real headless Chromium, driving the
// real binary: every check below is made by the browser on the live page,
// with tasks created and inspected from outside over the HTTP API.
//
// Run by tests/browser/run.sh, which installs Chromium and playwright-core
// when missing. Environment: BGTASKS_BIN (default target/release/bgtasks),
// CHROMIUM (default /usr/bin/chromium), PLAYWRIGHT_DIR (where
// node_modules/playwright-core is), BROWSER_ARTIFACTS (screenshots, default
// target/browser-artifacts).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.BGTASKS_BIN || path.join(ROOT, "target/release/bgtasks");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARTIFACTS = path.resolve(ROOT, process.env.BROWSER_ARTIFACTS || "target/browser-artifacts");
const PROGRESS = path.join(ROOT, "tests/browser/progress.sh");
/** The longest any single step waits before it fails: a liveness guard, not a speed. */
const PATIENCE = 20_000;
/** Chromium as root in a container, on a machine with no network but loopback. */
const FLAGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-dev-shm-usage"];
const { chromium } = createRequire(path.join(process.env.PLAYWRIGHT_DIR || ROOT, "noop.js"))("playwright-core");

/** Starts the binary on a port the kernel picks and resolves once it listens. */
async function startServer(args, addr = "127.0.0.1:0") {
  const child = spawn(BIN, ["--addr", addr, ...args], { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  const exited = new Promise((resolve) => child.on("exit", resolve));
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the server did not listen:\n" + log)), PATIENCE);
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (d) => {
      log += d;
      const m = /listening on (http:\/\/[^\s/]+)/.exec(log);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    exited.then((code) => { clearTimeout(timer); reject(new Error(`the server exited (${code}):\n${log}`)); });
  });
  return {
    base,
    addr: base.slice("http://".length),
    /** Sends SIGTERM, the way an operator restarts it, and waits for the exit. */
    async stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const t = setTimeout(() => child.kill("SIGKILL"), PATIENCE);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Makes one request from outside the browser; JSON bodies come back parsed. */
async function call(server, method, p, body, token) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = "Bearer " + token;
  const r = await fetch(server.base + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  const json = (r.headers.get("content-type") || "").startsWith("application/json") && text ? JSON.parse(text) : null;
  return { status: r.status, headers: r.headers, text, json };
}

/** Queues a task from outside and returns its id. */
async function submit(server, body, token) {
  const r = await call(server, "POST", "/tasks", body, token);
  assert.equal(r.status, 202, r.text);
  return r.json.id;
}

/** Polls `check` until it returns a truthy value, or fails after PATIENCE. */
async function eventually(what, check) {
  const deadline = Date.now() + PATIENCE;
  let last;
  for (;;) {
    last = await check();
    if (last) return last;
    if (Date.now() > deadline) assert.fail("timed out waiting until " + what);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Waits until the page's `fn(arg)` is truthy. */
function until(page, fn, arg) {
  return page.waitForFunction(fn, arg, { timeout: PATIENCE, polling: 50 });
}

/** The text of a task's cell in the table (column named as in its header), or null. */
function cell(page, id, column) {
  return page.evaluate(([id, column]) => {
    const td = document.querySelector(`#tasks tr[data-id="${id}"] td[data-col="${column}"]`);
    return td ? td.textContent : null;
  }, [id, column]);
}

/** Waits until a task's row shows `state`. */
function rowState(page, id, state) {
  return until(page, ([id, state]) => {
    const td = document.querySelector(`#tasks tr[data-id="${id}"] td[data-col="state"]`);
    return td && td.textContent === state;
  }, [id, state]);
}

/** Reads one count tile as a number. */
async function count(page, state) {
  return Number(await page.textContent("#count-" + state));
}

/** Saves a screenshot of the viewport, with transitions finished. */
function shoot(page, name) {
  return page.screenshot({ path: path.join(ARTIFACTS, name), animations: "disabled" });
}

let browser, server, context, page;
const requests = [], dialogs = [], pageErrors = [], cspErrors = [], consoleErrors = [];

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  server = await startServer(["--workers", "2", "--grace", "1s", "--queue", "slow=1/10", "--handler", "progress=" + PROGRESS,
    "--rate", "slow=1000/s", "--schedule", 'tick=@every 1h {"work_duration": "10ms"}']);
  // Playwright gives each launch a fresh profile of its own (--user-data-dir).
  browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
  context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await context.newPage();
  page.on("request", (r) => requests.push(r.url()));
  page.on("dialog", (d) => { dialogs.push(d.message()); d.dismiss().catch(() => {}); });
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  page.on("console", (m) => {
    if (/Content.Security.Policy/i.test(m.text())) cspErrors.push(m.text());
    if (m.type() === "error") consoleErrors.push(`${m.text()} (${m.location().url})`);
  });
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop("SIGKILL");
});

test("GET / is one self-contained page with the headers of SPEC §11", async () => {
  const r = await call(server, "GET", "/");
  assert.equal(r.status, 200);
  assert.equal(r.headers.get("content-type"), "text/html; charset=utf-8");
  assert.equal(r.headers.get("x-content-type-options"), "nosniff");
  assert.equal(r.headers.get("x-frame-options"), "DENY");
  const csp = r.headers.get("content-security-policy") || "";
  // Only keywords ('self', 'none', 'unsafe-inline', …): no host, no wildcard, and no scheme
  // but img-src's data: (the page's icon; a data: URL is no other origin).
  const directives = csp.split(";").map((d) => d.trim().split(/\s+/)).filter((d) => d[0]);
  assert.ok(directives.some((d) => d[0] === "default-src"), "the policy has a default-src: " + csp);
  for (const [name, ...sources] of directives) {
    for (const s of sources) {
      if (name === "img-src" && s === "data:") continue;
      assert.match(s, /^'[a-z0-9-]+'$/, `${name} allows ${s}: ${csp}`);
    }
  }
  assert.ok(Buffer.byteLength(r.text) <= 48 * 1024, "at most 48 KiB, got " + Buffer.byteLength(r.text));
  const urls = r.text.match(/\b(?:https?:)?\/\/[a-z0-9.-]+\.[a-z]{2,}[^\s"'<>)]*/gi) || [];
  assert.deepEqual(urls.filter((u) => u !== "http://www.w3.org/2000/svg"), [], "no address of another host");
});

test("the page loads without a token and goes live from /events", async () => {
  await page.goto(server.base + "/");
  await until(page, () => document.getElementById("conn").textContent === "live");
  await until(page, () => /^\d+$/.test(document.getElementById("count-queued").textContent));
});

test("counts change when tasks are POSTed from outside", async () => {
  const before = await count(page, "succeeded");
  for (let i = 0; i < 3; i++) await submit(server, { work_duration: "50ms", task_id: "count me" });
  await until(page, (n) => Number(document.getElementById("count-succeeded").textContent) >= n, before + 3);
  assert.match(await page.textContent("#totals"), /accepted [1-9]/);
});

test("a task appears in the table and its state moves to succeeded", async () => {
  const id = await submit(server, { work_duration: "300ms", task_id: "hello world" });
  await until(page, (id) => document.querySelector(`#tasks tr[data-id="${id}"]`), id);
  assert.equal(await cell(page, id, "task_id"), "hello world");
  assert.equal(await cell(page, id, "kind"), "sleep");
  assert.equal(await cell(page, id, "queue"), "default");
  await rowState(page, id, "succeeded");
});

test("progress shows live and the detail panel shows every status member", async () => {
  const id = await submit(server, { kind: "progress", task_id: "with progress" });
  await rowState(page, id, "succeeded");
  await until(page, (id) => /"percent":100/.test(
    document.querySelector(`#tasks tr[data-id="${id}"] td[data-col="progress"]`).textContent), id);
  const status = (await call(server, "GET", "/tasks/" + id)).json;
  await page.click(`#tasks tr[data-id="${id}"]`);
  await until(page, () => document.getElementById("detail").open
    && document.querySelector('#d-body dd[data-member="state"]'));
  for (const [k, v] of Object.entries(status)) {
    const shown = await page.evaluate((k) => {
      const dd = document.querySelector(`#d-body dd[data-member="${k}"]`);
      return dd && dd.textContent;
    }, k);
    assert.notEqual(shown, null, "the panel shows member " + k);
    if (v === null) assert.equal(shown, "null", k);
    else if (typeof v === "object") assert.deepEqual(JSON.parse(shown), v, k);
    else assert.equal(shown, String(v), k);
  }
  assert.equal(await page.isVisible("#d-cancel"), false, "no cancel button for a finished task");
  await page.keyboard.press("Escape");
  await until(page, () => !document.getElementById("detail").open);
  assert.equal(await page.evaluate(() => document.activeElement.dataset.id), id, "focus goes back to the row");
});

test("cancel in the detail panel, reached by keyboard, cancels a running task", async () => {
  const id = await submit(server, { work_duration: "60s", task_id: "long" });
  await rowState(page, id, "running");
  await page.focus(`#tasks tr[data-id="${id}"]`);
  await page.keyboard.press("Enter");
  await page.waitForSelector("#d-cancel", { state: "visible", timeout: PATIENCE });
  await page.click("#d-cancel");
  await eventually("the API says cancelled", async () =>
    (await call(server, "GET", "/tasks/" + id)).json.state === "cancelled");
  await rowState(page, id, "cancelled");
  await page.waitForSelector("#d-cancel", { state: "hidden", timeout: PATIENCE });
  await until(page, () => document.activeElement.id === "d-close"); // the focus stays in the panel
  await page.keyboard.press("Enter");
  await until(page, () => !document.getElementById("detail").open);
});

test("waiting shows in the counts; after and retry_of link to their tasks; Retry submits again", async () => {
  const a = await submit(server, { work_duration: "60s", task_id: "first step" });
  const b = await submit(server, { work_duration: "10ms", task_id: "second step", after: [a] });
  await until(page, () => Number(document.getElementById("count-waiting").textContent) >= 1);
  await rowState(page, b, "waiting");
  await page.click(`#tasks tr[data-id="${b}"]`);
  const link = (member, id) => `#d-body dd[data-member="${member}"] a[data-task="${id}"]`;
  await page.waitForSelector(link("after", a), { timeout: PATIENCE });
  assert.equal(await page.isVisible("#d-retry"), false, "no retry button for a waiting task");
  await page.click(link("after", a));
  await until(page, (a) => document.getElementById("d-title").textContent === "Task " + a
    && (document.querySelector('#d-body dd[data-member="id"]') || {}).textContent === a, a);
  // Cancelling a cancels b, which waits for it; b is retried from its panel.
  assert.equal((await call(server, "POST", "/tasks/" + a + "/cancel")).status, 200);
  await page.keyboard.press("Escape");
  await until(page, () => !document.getElementById("detail").open);
  await rowState(page, b, "cancelled");
  await page.click(`#tasks tr[data-id="${b}"]`);
  await page.waitForSelector("#d-retry", { state: "visible", timeout: PATIENCE });
  await page.click("#d-retry");
  await page.waitForSelector(link("retry_of", b), { timeout: PATIENCE });
  const again = await page.textContent('#d-body dd[data-member="id"]');
  assert.notEqual(again, b);
  const status = (await call(server, "GET", "/tasks/" + again)).json;
  assert.equal(status.retry_of, b);
  assert.equal(status.task_id, "second step");
  assert.equal(status.after, null);
  await page.keyboard.press("Escape");
  await until(page, () => !document.getElementById("detail").open);
});

test("pause and resume toggle a queue, by mouse and then by keyboard", async () => {
  const button = '#queues [data-queue="slow"] button';
  const paused = async () => (await call(server, "GET", "/queues")).json.queues.find((q) => q.name === "slow").paused;
  assert.equal(await paused(), false);
  const badge = '#queues [data-queue="slow"] .badge';
  assert.equal(await page.textContent(button), "Pause");
  assert.equal(await page.isVisible(badge), false, "a running queue shows no paused badge");
  await page.click(button);
  await eventually("GET /queues says paused", paused);
  await until(page, (b) => document.querySelector(b).textContent === "Resume", button);
  assert.equal(await page.isVisible(badge), true, "paused is shown");
  assert.equal(await page.evaluate((b) => document.activeElement === document.querySelector(b), button), true,
    "the button keeps the focus through the update");
  await page.keyboard.press("Enter");
  await eventually("GET /queues says running", async () => !(await paused()));
  await until(page, (b) => document.querySelector(b).textContent === "Pause", button);
  assert.equal(await page.isVisible(badge), false, "the badge goes away on resume");
});

test("a queue's card shows its --rate, and a queue without one shows none", async () => {
  const rate = (q) => `#queues [data-queue="${q}"] .rate`;
  await page.waitForSelector(rate("slow"), { state: "visible", timeout: PATIENCE });
  assert.equal(await page.textContent(rate("slow")), "at most 1000/s");
  assert.equal(await page.isVisible(rate("default")), false);
});

test("a task_id made of markup shows as text and runs no script", async () => {
  const label = "<img src=x onerror=alert(1)>";
  const id = await submit(server, { work_duration: "10ms", task_id: label });
  await rowState(page, id, "succeeded");
  assert.equal(await cell(page, id, "task_id"), label);
  await page.click(`#tasks tr[data-id="${id}"]`);
  await until(page, () => document.querySelector('#d-body dd[data-member="task_id"]'));
  assert.equal(await page.textContent('#d-body dd[data-member="task_id"]'), label);
  await page.click("#d-close");
  assert.equal(await page.evaluate(() => document.querySelectorAll("img").length), 0, "no <img> was made");
  assert.deepEqual(dialogs, [], "no alert fired");
});

test("the filters narrow the table by state, queue, kind and task_id", async () => {
  const slow = await submit(server, { work_duration: "10ms", task_id: "filter-me", queue: "slow" });
  await rowState(page, slow, "succeeded");
  const visible = () => page.evaluate(() => Array.from(document.querySelectorAll("#tasks tbody tr"), (r) => r.dataset.id));
  await page.selectOption("#f-queue", "slow");
  await until(page, (id) => Array.from(document.querySelectorAll("#tasks tbody tr")).every((r) =>
    r.querySelector('[data-col="queue"]').textContent === "slow") && document.querySelector(`#tasks tr[data-id="${id}"]`), slow);
  await page.selectOption("#f-queue", "");
  await page.selectOption("#f-state", "cancelled");
  await until(page, () => Array.from(document.querySelectorAll("#tasks tbody tr")).every((r) =>
    r.querySelector('[data-col="state"]').textContent === "cancelled"));
  assert.ok(!(await visible()).includes(slow));
  await page.selectOption("#f-state", "");
  await page.fill("#f-kind", "progress");
  await until(page, () => { const rs = document.querySelectorAll("#tasks tbody tr");
    return rs.length > 0 && Array.from(rs).every((r) => r.querySelector('[data-col="kind"]').textContent === "progress"); });
  await page.fill("#f-kind", "");
  await page.fill("#f-label", "filter-me");
  await until(page, (id) => { const ids = Array.from(document.querySelectorAll("#tasks tbody tr"), (r) => r.dataset.id);
    return ids.length === 1 && ids[0] === id; }, slow);
  await page.fill("#f-label", "");
});

test("the chart counts tasks accepted and finished per second", async () => {
  for (let i = 0; i < 5; i++) await submit(server, { work_duration: "10ms" });
  await until(page, () => {
    const a = /\((\d+) last min\)/.exec(document.getElementById("leg-a").textContent);
    const f = /\((\d+) last min\)/.exec(document.getElementById("leg-f").textContent);
    return a && f && Number(a[1]) >= 5 && Number(f[1]) >= 5;
  });
  assert.equal(await page.evaluate(() => document.querySelectorAll("#chart svg polyline").length), 2);
});

test("the schedules show with their next firing", async () => {
  await until(page, () => {
    const row = Array.from(document.querySelectorAll("#schedules tbody tr"))
      .find((r) => r.cells[0].textContent === "tick");
    return row && row.cells[1].textContent === "@every 1h" && /^in \d+ (s|min|h)$/.test(row.cells[2].textContent);
  });
});

test("screenshots at 1280x800 and 360x640; nothing overflows at 360 px", async () => {
  // Something in every state, so the picture shows what the page is for.
  await submit(server, { work_duration: "5s", timeout: "200ms", task_id: "too slow" });
  await submit(server, { work_duration: "60s", task_id: "nightly report" });
  await submit(server, { kind: "progress", task_id: "import users", queue: "slow" });
  await submit(server, { work_duration: "10ms", task_id: "thumbnail 7" });
  await until(page, () => Number(document.getElementById("count-failed").textContent) >= 1);
  await page.evaluate(() => document.activeElement.blur());
  await shoot(page, "dashboard-1280x800.png");
  await page.setViewportSize({ width: 360, height: 640 });
  const overflow = () => page.evaluate(() => {
    const d = document.documentElement;
    return d.scrollWidth > d.clientWidth ? `scrollWidth ${d.scrollWidth} > clientWidth ${d.clientWidth}` : null;
  });
  await until(page, () => document.documentElement.clientWidth === 360);
  assert.equal(await overflow(), null);
  await shoot(page, "dashboard-360x640.png");
  const first = await page.evaluate(() => document.querySelector("#tasks tbody tr").dataset.id);
  await page.click(`#tasks tr[data-id="${first}"]`);
  await until(page, () => document.querySelector('#d-body dd[data-member="state"]'));
  const box = await page.evaluate(() => { const r = document.getElementById("detail").getBoundingClientRect();
    return [r.left, r.right]; });
  assert.ok(box[0] >= 0 && box[1] <= 360, "the detail panel fits: " + box);
  assert.equal(await overflow(), null);
  await shoot(page, "dashboard-360x640-detail.png");
  await page.keyboard.press("Escape");
  await page.setViewportSize({ width: 1280, height: 800 });
});

test("the page made no request to another origin and broke no policy", async () => {
  const origin = new URL(server.base).origin;
  const foreign = requests.filter((u) => new URL(u).origin !== origin && !u.startsWith("data:"));
  assert.deepEqual(foreign, [], "requests seen by the browser");
  const entries = await page.evaluate(() => performance.getEntriesByType("resource").map((e) => e.name));
  assert.ok(entries.some((u) => new URL(u).pathname === "/tasks"), "the entries list the page's fetches: " + entries);
  assert.deepEqual(entries.filter((u) => new URL(u).origin !== origin), [], "performance resource entries");
  assert.deepEqual(pageErrors, [], "uncaught errors in the page");
  assert.deepEqual(cspErrors, [], "Content-Security-Policy reports");
  // Chromium's own /favicon.ico request, had the page no icon, would be a 404 here.
  assert.deepEqual(consoleErrors, [], "console errors");
});

test("after a restart the page says reconnecting, then is live again", async () => {
  const addr = server.addr;
  await server.stop();
  await until(page, () => document.getElementById("conn").textContent.startsWith("reconnecting"));
  server = await startServer(["--workers", "2", "--queue", "slow=1/10"], addr);
  await until(page, () => document.getElementById("conn").textContent === "live");
  const id = await submit(server, { work_duration: "10ms", task_id: "after restart" });
  await rowState(page, id, "succeeded");
});

test("with --token the page asks for the token, refuses a wrong one, then works", async () => {
  const token = "s3cret-Token";
  const guarded = await startServer(["--token", token]);
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  try {
    const p = await ctx.newPage();
    const r = await call(guarded, "GET", "/events");
    assert.equal(r.status, 401, "the stream needs the token");
    await p.goto(guarded.base + "/");
    await p.waitForSelector("#auth", { state: "visible", timeout: PATIENCE });
    assert.equal(await p.evaluate(() => document.activeElement.id), "token", "the form has the focus");
    await p.keyboard.type("wrong");
    await p.keyboard.press("Enter");
    await until(p, () => /refused/.test(document.getElementById("auth-note").textContent)
      && !document.getElementById("auth").hidden);
    await p.fill("#token", token);
    await p.keyboard.press("Enter");
    await until(p, () => document.getElementById("conn").textContent === "live");
    assert.equal(await p.isVisible("#auth"), false);
    const id = await submit(guarded, { work_duration: "10ms", task_id: "behind a token" }, token);
    await rowState(p, id, "succeeded");
    await p.click(`#tasks tr[data-id="${id}"]`);
    await until(p, () => document.querySelector('#d-body dd[data-member="state"]')?.textContent === "succeeded");
    await p.keyboard.press("Escape");
    await p.reload();
    await until(p, () => document.getElementById("conn").textContent === "live");
    assert.equal(await p.isVisible("#auth"), false, "asked once per browser session");
  } finally {
    await ctx.close();
    await guarded.stop("SIGKILL");
  }
});
