//! Issue 13: one client must not make the server hold gigabytes (SPEC §2
//! "List tasks": pages of at most `limit` tasks and 256 KiB, walked with
//! `next` links), and trailers parsed as strictly as headers (SPEC §3).

mod common;

use common::{PATIENCE, Server, closes, eventually, post_request, read_response};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The most bytes of tasks a list page holds (SPEC §2).
const PAGE_BYTES: usize = 256 << 10;

/// A label with everything a query string must escape: spaces, `&`, `/`,
/// `%`, `+`, `=`, `?`, `#` and non-ASCII.
const ODD_LABEL: &str = "a b&c/d%e+f=g?h#i é ✓";

/// Percent-encodes text for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Returns the decoded value of `name` in a link's form-encoded query.
fn query_value(link: &str, name: &str) -> Option<String> {
    let query = link.split_once('?')?.1;
    let decode = |s: &str| {
        let mut out = Vec::new();
        let mut bytes = s.bytes();
        while let Some(b) = bytes.next() {
            match b {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex: String = [bytes.next()?, bytes.next()?]
                        .iter()
                        .map(|&b| b as char)
                        .collect();
                    out.push(u8::from_str_radix(&hex, 16).ok()?);
                }
                _ => out.push(b),
            }
        }
        String::from_utf8(out).ok()
    };
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| decode(v))
}

/// Returns the ids of a page's tasks, in its order.
fn ids(page: &Value) -> Vec<String> {
    page["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("no tasks in {page}"))
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

/// A page of a walk: its body as sent and as parsed.
struct Page {
    /// The answer's body.
    raw: Vec<u8>,
    /// The body, parsed.
    json: Value,
}

/// Follows `next` links from `first` until one is `null`; returns every
/// page. Each link must be a `/tasks?` path.
fn walk(server: &Server, first: &str) -> Vec<Page> {
    let mut pages = Vec::new();
    let mut path = first.to_string();
    loop {
        let r = server.get(&path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        let json = r.json();
        let next = json["next"].clone();
        pages.push(Page { raw: r.body, json });
        match next {
            Value::Null => return pages,
            Value::String(link) => {
                assert!(link.starts_with("/tasks?"), "next link {link:?}");
                path = link;
            }
            other => panic!("next is {other}"),
        }
        assert!(pages.len() < 100_000, "the walk does not end");
    }
}

/// Returns the ids of all pages of a walk, in order.
fn walked_ids(pages: &[Page]) -> Vec<String> {
    pages.iter().flat_map(|p| ids(&p.json)).collect()
}

/// Queues `count` tasks with bodies `body(i)` on `/tasks` over four
/// connections, pipelining a few at a time, and checks each got `202`.
/// (The `202` echoes a large `task_id`, so a client that sent hundreds
/// before reading would fill both directions' buffers and stall.)
fn submit_all(server: &Server, count: usize, body: impl Fn(usize) -> String + Sync) {
    const CONNS: usize = 4;
    const BATCH: usize = 8;
    std::thread::scope(|scope| {
        for c in 0..CONNS {
            let body = &body;
            scope.spawn(move || {
                let mut stream = server.connect();
                let mine: Vec<usize> = (c..count).step_by(CONNS).collect();
                for batch in mine.chunks(BATCH) {
                    let mut out = Vec::new();
                    for &i in batch {
                        out.extend_from_slice(post_request("/tasks", &[], &body(i)).as_bytes());
                    }
                    stream.write_all(&out).unwrap();
                    for &i in batch {
                        let r = read_response(&mut stream).expect("an answer");
                        assert_eq!(r.status, 202, "task {i}: {}", r.text());
                    }
                }
            });
        }
    });
}

/// Returns the counts of retained tasks by state.
fn counts(server: &Server) -> Value {
    server.get("/tasks?limit=1").json()["counts"].clone()
}

/// Waits until `n` tasks are terminal.
fn wait_terminal(server: &Server, n: u64) {
    eventually(&format!("{n} terminal tasks"), || {
        let c = counts(server);
        let done: u64 = ["succeeded", "failed", "cancelled"]
            .iter()
            .map(|s| c[s].as_u64().unwrap())
            .sum();
        (done == n).then_some(())
    });
}

/// Returns every retained task, newest first, from one page.
fn all_tasks(server: &Server) -> Vec<Value> {
    let page = server.get("/tasks?limit=1000").json();
    assert_eq!(page["next"], Value::Null, "more than one page of tasks");
    page["tasks"].as_array().unwrap().clone()
}

/// The bytes of a page's `tasks` array between its brackets.
fn tasks_bytes(raw: &[u8]) -> usize {
    let text = std::str::from_utf8(raw).unwrap();
    let start = text.find('[').unwrap() + 1;
    let end = text.rfind("], \"counts\": ").unwrap();
    end - start
}

/// Tells whether a list filter keeps a task.
type Keep = fn(&Value) -> bool;

#[test]
fn next_links_walk_every_task_once_newest_first_with_and_without_filters() {
    let server = Server::start(&["--keep-finished", "1000", "--buffer", "1000"]);
    submit_all(&server, 250, |i| {
        let label = if i % 5 == 0 { ODD_LABEL } else { "plain" };
        if i % 4 == 3 {
            json!({"task_id": label, "work_duration": "10s", "timeout": "1ms"}).to_string()
        } else {
            json!({"task_id": label, "work_duration": "0s"}).to_string()
        }
    });
    wait_terminal(&server, 250);
    let all = all_tasks(&server);
    assert_eq!(all.len(), 250);
    let all_ids: Vec<String> = all
        .iter()
        .map(|t| t["id"].as_str().unwrap().into())
        .collect();
    assert!(
        all_ids.windows(2).all(|w| w[0] > w[1]),
        "newest first by id"
    );
    let odd = encode(ODD_LABEL);
    let filters: [(String, Keep); 5] = [
        (String::new(), |_| true),
        ("state=succeeded&".into(), |t| t["state"] == "succeeded"),
        ("state=failed&".into(), |t| t["state"] == "failed"),
        (format!("task_id={odd}&"), |t| t["task_id"] == ODD_LABEL),
        (format!("state=failed&task_id={odd}&"), |t| {
            t["state"] == "failed" && t["task_id"] == ODD_LABEL
        }),
    ];
    for (filter, keep) in filters {
        let expected: Vec<String> = all
            .iter()
            .filter(|t| keep(t))
            .map(|t| t["id"].as_str().unwrap().into())
            .collect();
        assert!(expected.len() > 7, "{filter}: too few tasks to page");
        let pages = walk(&server, &format!("/tasks?{filter}limit=7"));
        assert_eq!(walked_ids(&pages), expected, "walk with {filter:?}");
        assert_eq!(pages.len(), expected.len().div_ceil(7), "{filter}");
        for page in &pages[..pages.len() - 1] {
            assert_eq!(ids(&page.json).len(), 7, "{filter}: a short page");
            let link = page.json["next"].as_str().unwrap();
            assert_eq!(query_value(link, "limit").as_deref(), Some("7"), "{link}");
            let state = filter
                .strip_prefix("state=")
                .map(|s| s.split('&').next().unwrap());
            assert_eq!(query_value(link, "state").as_deref(), state, "{link}");
            let label = filter.contains("task_id=").then_some(ODD_LABEL);
            assert_eq!(query_value(link, "task_id").as_deref(), label, "{link}");
        }
        assert_eq!(pages.last().unwrap().json["next"], Value::Null);
    }
}

#[test]
fn before_must_be_an_id_this_server_issued_evicted_or_not() {
    let server = Server::start(&["--keep-finished", "3"]);
    let running = server.submit("60s");
    let finished: Vec<String> = (0..8)
        .map(|_| {
            let id = server.submit("0s");
            server.wait_state(&id, "succeeded");
            id
        })
        .collect();
    let evicted = &finished[0];
    assert_eq!(server.get(&format!("/tasks/{evicted}")).status, 410);
    for before in [
        "abc",
        "",
        "%zz",
        "---------",
        "zzzzzzzzz",
        "1234567890",
        &format!("{evicted}x"),
    ] {
        let r = server.get(&format!("/tasks?before={before}"));
        let want = if before == "%zz" {
            "the query string has a broken percent escape"
        } else {
            "before must be the id of a task this server made"
        };
        assert_eq!(
            (r.status, r.json()["error"].clone()),
            (400, json!(want)),
            "before={before}"
        );
    }
    // Only the running task is older than the evicted one and retained.
    for query in [
        format!("before={evicted}"),
        format!("limit=1&before={evicted}"),
    ] {
        let page = server.get(&format!("/tasks?{query}")).json();
        assert_eq!(ids(&page), [running.as_str()], "{query}");
        assert_eq!(page["next"], Value::Null, "{query}");
    }
    // Before a retained task: the older retained ones.
    let newest = finished.last().unwrap();
    let page = server.get(&format!("/tasks?before={newest}")).json();
    assert_eq!(
        ids(&page),
        [finished[6].as_str(), finished[5].as_str(), running.as_str()]
    );
}

#[test]
fn a_walk_while_tasks_come_and_go_lists_each_once_and_misses_none_that_stayed() {
    let server = Server::start(&["--keep-finished", "100", "--buffer", "1000"]);
    submit_all(&server, 100, |_| {
        json!({"task_id": "old", "work_duration": "0s"}).to_string()
    });
    wait_terminal(&server, 100);
    let retained = |server: &Server| -> HashSet<String> {
        all_tasks(server)
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    let at_start = retained(&server);
    assert_eq!(at_start.len(), 100);
    // Each page walked lets the submitter queue four more tasks, each of
    // which evicts the earliest finished once it is done: the walk from
    // the newest end meets the evictions from the oldest end, so pages
    // also continue from a `before` task that has just been evicted.
    let pages_walked = AtomicUsize::new(0);
    let walk_done = AtomicUsize::new(0);
    let (listed, at_end, created) = std::thread::scope(|scope| {
        let submitter = scope.spawn(|| {
            let mut created = 0;
            while walk_done.load(Ordering::SeqCst) == 0 {
                if created < 4 * pages_walked.load(Ordering::SeqCst) {
                    server.submit_labelled("new", "0s");
                    created += 1;
                } else {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            created
        });
        let mut listed = Vec::new();
        let mut path = "/tasks?limit=3".to_string();
        loop {
            let page = server.get(&path).json();
            listed.extend(ids(&page));
            pages_walked.fetch_add(1, Ordering::SeqCst);
            match page["next"].as_str() {
                Some(link) => path = link.to_string(),
                None => break,
            }
        }
        let at_end = retained(&server);
        walk_done.store(1, Ordering::SeqCst);
        (listed, at_end, submitter.join().unwrap())
    });
    let unique: HashSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "an id listed twice: {listed:?}");
    assert!(
        listed.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {listed:?}"
    );
    assert!(
        listed.iter().all(|id| at_start.contains(id)),
        "the walk listed a task newer than its first page"
    );
    let stayed: Vec<&String> = at_start.intersection(&at_end).collect();
    let missed: Vec<&&String> = stayed.iter().filter(|id| !unique.contains(**id)).collect();
    assert!(
        missed.is_empty(),
        "retained throughout but not listed: {missed:?}"
    );
    let evicted = at_start.len() - stayed.len();
    eprintln!(
        "walk under churn: {} listed in {} pages, {created} created, {evicted} evicted, {} stayed",
        listed.len(),
        listed.len().div_ceil(3),
        stayed.len()
    );
    assert!(
        evicted > 0 && !stayed.is_empty(),
        "the churn did not overlap the walk"
    );
}

/// Queues `count` `0s` tasks whose `task_id` is `len` bytes, and waits
/// until all are done.
fn store_big_tasks(server: &Server, count: usize, len: usize) {
    submit_all(server, count, |i| {
        let label = format!("{i:06}{}", "x".repeat(len - 6));
        json!({"task_id": label, "work_duration": "0s"}).to_string()
    });
    wait_terminal(server, count as u64);
}

#[test]
fn a_page_of_large_tasks_stops_near_256_kib_and_the_links_still_walk_all() {
    let server = Server::start(&[]);
    store_big_tasks(&server, 12, 60_000);
    let all: Vec<String> = walked_ids(&walk(&server, "/tasks?limit=1"))
        .into_iter()
        .collect();
    assert_eq!(all.len(), 12);
    let pages = walk(&server, "/tasks?limit=1000");
    assert_eq!(
        walked_ids(&pages),
        all,
        "the pages together list every task once"
    );
    assert!(pages.len() > 1, "12 tasks of 60 KB cannot fit one page");
    for page in &pages {
        let n = ids(&page.json).len();
        let bytes = tasks_bytes(&page.raw);
        let task = bytes / n;
        eprintln!(
            "page of {n} tasks: {bytes} bytes of tasks, {} bytes of body",
            page.raw.len()
        );
        assert!(n >= 1);
        assert!(
            page.raw.len() <= PAGE_BYTES + task + 1024,
            "a body of {} bytes",
            page.raw.len()
        );
        if !page.json["next"].is_null() {
            assert!(
                bytes + 2 + task > PAGE_BYTES,
                "a page of {n} tasks ({bytes} bytes) had room for another"
            );
        }
    }
}

#[test]
fn a_page_holds_at_most_256_kib_of_tasks_unless_it_holds_one() {
    let server = Server::start(&[]);
    store_big_tasks(&server, 12, 60_000);
    for page in walk(&server, "/tasks?limit=1000") {
        let n = ids(&page.json).len();
        let bytes = tasks_bytes(&page.raw);
        assert!(
            n == 1 || bytes <= PAGE_BYTES,
            "{n} tasks in {bytes} bytes, over {PAGE_BYTES}"
        );
    }
}

#[test]
fn one_task_larger_than_a_page_still_fits_on_its_own() {
    let server = Server::start(&["--max-body", "1000000"]);
    store_big_tasks(&server, 3, 300_000);
    let pages = walk(&server, "/tasks");
    assert_eq!(pages.len(), 3);
    for page in &pages {
        assert_eq!(ids(&page.json).len(), 1);
        assert!(tasks_bytes(&page.raw) > PAGE_BYTES);
    }
    let listed: HashSet<String> = walked_ids(&pages).into_iter().collect();
    assert_eq!(listed.len(), 3);
}

/// Counts the server's `200` answers from one reading of `/metrics` on,
/// leaving out the readings themselves (each is a `200` counted once
/// written, after its own body was made).
struct Answered<'a> {
    /// The server read.
    server: &'a Server,
    /// The first reading.
    base: f64,
    /// Readings taken so far.
    readings: u32,
}

impl<'a> Answered<'a> {
    /// Takes the first reading.
    fn start(server: &'a Server) -> Answered<'a> {
        let base = server.metric("bgtasks_http_requests_total{code=\"200\"}");
        Answered {
            server,
            base,
            readings: 1,
        }
    }

    /// Returns how many `200`s others got since the first reading.
    fn count(&mut self) -> u64 {
        let now = self
            .server
            .metric("bgtasks_http_requests_total{code=\"200\"}");
        let others = now - self.base - f64::from(self.readings);
        self.readings += 1;
        others as u64
    }
}

/// Samples the server's RSS and remembers the highest.
struct Rss<'a> {
    /// The server measured.
    server: &'a Server,
    /// The highest reading so far, in KiB.
    peak: u64,
}

impl Rss<'_> {
    /// Reads RSS now, in KiB.
    fn sample(&mut self) -> u64 {
        let now = self.server.rss_kib();
        self.peak = self.peak.max(now);
        now
    }

    /// Reads RSS every 200 ms until two readings agree (or the patience
    /// runs out); returns the last.
    fn settle(&mut self) -> u64 {
        let deadline = Instant::now() + PATIENCE;
        let mut last = self.sample();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.sample();
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// Waits for RSS to settle, prints what `what` cost over `base`, and
    /// checks that its peak stayed under [`MAX_GROWTH_KIB`].
    fn check_growth(&mut self, what: &str, base: u64) {
        let settled = self.settle();
        let peak = self.peak;
        eprintln!(
            "{what}: RSS base {base} KiB, settled {settled} KiB (+{} KiB), peak {peak} KiB (+{} KiB)",
            settled.saturating_sub(base),
            peak - base
        );
        assert!(
            peak - base < MAX_GROWTH_KIB,
            "{what}: RSS grew by {} KiB",
            peak - base
        );
    }
}

/// The most RSS the stalled readers may add (issue 13).
const MAX_GROWTH_KIB: u64 = 32 << 10;

#[test]
fn fifty_readers_that_never_read_a_list_of_large_tasks_cost_under_32_mb() {
    common::raise_fd_limit();
    let server = Server::start(&["--keep-finished", "2000", "--buffer", "2000"]);
    store_big_tasks(&server, 1000, 60_000);
    let mut rss = Rss {
        server: &server,
        peak: 0,
    };
    let base = rss.settle();
    rss.peak = base;
    let request = b"GET /tasks?limit=1000 HTTP/1.1\r\nHost: t\r\n\r\n";

    // Fifty clients each ask for a list and never read it.
    let mut answered = Answered::start(&server);
    let stalled: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut stream = server.connect();
            stream.write_all(request).unwrap();
            stream
        })
        .collect();
    eventually("50 list answers", || {
        rss.sample();
        (answered.count() >= 50).then_some(())
    });
    rss.check_growth("50 stalled list readers", base);
    drop(stalled);

    // Ten clients each pipeline fifty list requests and never read.
    let mut answered = Answered::start(&server);
    let pipelined: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut stream = server.connect();
            stream.write_all(&request.repeat(50)).unwrap();
            stream
        })
        .collect();
    // The server answers what the kernel's buffers take and stops: wait
    // until the count holds still for a second.
    let mut last = (answered.count(), Instant::now());
    eventually("the pipelined answers to stop", || {
        rss.sample();
        std::thread::sleep(Duration::from_millis(100));
        let now = answered.count();
        if now != last.0 {
            last = (now, Instant::now());
        }
        (now >= 10 && last.1.elapsed() >= Duration::from_secs(1)).then_some(now)
    });
    let what = format!("10 stalled pipeliners × 50 lists, {} answered", last.0);
    rss.check_growth(&what, base);
    drop(pipelined);

    assert_eq!(server.get("/healthz").status, 200);
    let page = server.get("/tasks?limit=1000");
    assert_eq!(page.status, 200);
    assert!(!ids(&page.json()).is_empty());
}

/// The submission of issue 13's trailer cases, with `line` as its trailer.
fn chunked_with_trailer(line: &str) -> String {
    let body = r#"{"task_id": "t", "work_duration": "0s"}"#;
    format!(
        "POST /tasks HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n{line}\r\n\r\n",
        body.len()
    )
}

#[test]
fn a_malformed_trailer_line_is_400_and_closes_the_connection() {
    let server = Server::start(&[]);
    for line in [
        "no-colon",
        "Bad Name: x",
        "Name : y",
        ": empty-name",
        " folded: x",
        "POST /tasks HTTP/1.1",
    ] {
        let mut stream = server.connect();
        stream
            .write_all(chunked_with_trailer(line).as_bytes())
            .unwrap();
        let r = read_response(&mut stream).expect("an answer");
        assert_eq!(r.status, 400, "trailer {line:?}: {}", r.text());
        assert!(r.json()["error"].is_string());
        assert_eq!(r.header("connection"), Some("close"), "trailer {line:?}");
        assert!(closes(&mut stream, PATIENCE), "trailer {line:?}");
    }
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 0.0);
    assert_eq!(counts(&server)["queued"], 0);
    assert!(all_tasks(&server).is_empty());

    let mut stream = server.connect();
    let good = chunked_with_trailer("X-Checksum: abc") + "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
    stream.write_all(good.as_bytes()).unwrap();
    assert_eq!(read_response(&mut stream).unwrap().status, 202);
    assert_eq!(read_response(&mut stream).unwrap().status, 200);
    assert_eq!(server.metric("bgtasks_tasks_accepted_total"), 1.0);
}

#[test]
fn vertical_tab_and_form_feed_separate_a_request_line_as_rfc_9112_allows() {
    let server = Server::start(&[]);
    for line in [
        "GET\x0b/healthz HTTP/1.1",
        "GET /healthz\x0cHTTP/1.1",
        "\x0cGET /healthz HTTP/1.1",
    ] {
        let r = server.raw(format!("{line}\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(
            (r.status, r.text()),
            (200, r#"{"status": "ok"}"#.to_string()),
            "{line:?}"
        );
    }
}
