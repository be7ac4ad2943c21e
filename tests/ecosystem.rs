//! SPEC §12: fitting the ecosystem. `--node` (ids a proxy can route by)
//! and the systemd notify protocol, on the real binary. The checks with
//! the real tools (Schemathesis, promtool, systemd-analyze, nginx) are the
//! scripts in tests/ecosystem/, run by .ci/run.

mod common;

use common::{PATIENCE, Server, TempDir, command, post_request, read_response};
use rustix::process::Signal;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::process::Stdio;

/// Tells whether `id` is `NAME_` followed by the 9 characters of an id.
fn has_prefix(id: &str, node: &str) -> bool {
    id.strip_prefix(node)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|rest| {
            rest.len() == 9
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// Returns the 9 characters of an id, without its prefix.
fn bare(id: &str) -> &str {
    &id[id.len() - 9..]
}

#[test]
fn node_ids_are_the_prefix_and_nine_characters_in_creation_order() {
    let server = Server::start(&["--node", "a", "--workers", "1", "--buffer", "100"]);
    let mut ids = Vec::new();
    for _ in 0..50 {
        let r = server.post("/tasks", r#"{"work_duration": "60s"}"#);
        assert_eq!(r.status, 202, "{r:?}");
        let id = r.json()["id"].as_str().unwrap().to_string();
        assert!(has_prefix(&id, "a"), "{id}");
        assert_eq!(r.header("location"), Some(&*format!("/tasks/{id}")));
        ids.push(id);
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids, "ids sort, as strings, in creation order");
    // The longest name still makes an id of at most 32 characters.
    let long = "n".repeat(16);
    let server = Server::start(&["--node", &long]);
    let id = server.submit("0s");
    assert!(has_prefix(&id, &long) && id.len() <= 32, "{id}");
}

#[test]
fn node_ids_are_read_and_cancelled_with_their_prefix_only() {
    let server = Server::start(&["--node", "a", "--workers", "1"]);
    let running = server.submit("60s");
    let queued = server.submit("60s");
    server.wait_state(&running, "running");
    assert_eq!(server.task(&queued)["id"], *queued);
    let status = server.get(&format!("/tasks/{running}?wait=10ms"));
    assert_eq!(
        (status.status, &status.json()["id"]),
        (200, &running.clone().into())
    );
    for wrong in [
        bare(&queued).to_string(),
        format!("b_{}", bare(&queued)),
        format!("aa_{}", bare(&queued)),
    ] {
        for (method, path) in [
            ("GET", format!("/tasks/{wrong}")),
            ("GET", format!("/tasks/{wrong}?wait=1s")),
            ("HEAD", format!("/tasks/{wrong}")),
            ("POST", format!("/tasks/{wrong}/cancel")),
        ] {
            // Read to the close: a HEAD's answer has no body.
            let mut stream = server.connect();
            let request =
                format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            assert!(
                answer.starts_with("HTTP/1.1 404 "),
                "{method} {path}: {answer}"
            );
        }
    }
    assert_eq!(
        server.task(&queued)["state"],
        "queued",
        "no wrong id touched it"
    );
    let r = server.cancel(&queued);
    assert_eq!((r.status, &r.json()["state"]), (200, &"cancelled".into()));
    let r = server.cancel(&running);
    assert_eq!((r.status, &r.json()["id"]), (200, &running.clone().into()));
    let r = server.cancel(&running);
    assert_eq!((r.status, &r.json()["id"]), (409, &running.into()));
    // A list's next page continues before an id with its prefix.
    let page = server.get("/tasks?limit=1").json();
    let next = page["next"].as_str().unwrap();
    assert!(next.ends_with(&format!("before={queued}")), "{next}");
    assert_eq!(server.get(next).status, 200);
}

#[test]
fn a_bad_node_name_exits_2_with_one_line() {
    let long = "a".repeat(17);
    for name in ["A", "Node1", &*long, "a_b", "a-b", "", " a"] {
        for (args, env) in [
            (vec!["--node", name], vec![]),
            (vec![], vec![("BGTASKS_NODE", name)]),
        ] {
            let out = command(&["--addr", "127.0.0.1:0"], &args, &env)
                .output()
                .unwrap();
            let stderr = String::from_utf8(out.stderr).unwrap();
            assert_eq!(out.status.code(), Some(2), "{name:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{name:?}: {stderr}");
            assert!(stderr.contains("node"), "{name:?}: {stderr}");
        }
    }
}

#[test]
fn replayed_ids_keep_the_prefix_they_were_made_with() {
    let dir = TempDir::new("node-replay");
    let data = dir.path("data");
    let data = data.to_str().unwrap();
    let args = |node| ["--node", node, "--data-dir", data, "--workers", "1"];
    let mut a = Server::start(&args("a"));
    let finished = a.submit("0s");
    a.wait_state(&finished, "succeeded");
    let running = a.submit("60s");
    a.wait_state(&running, "running");
    let queued = a.submit("60s");
    assert_eq!(a.stop(Signal::TERM).0, Some(0));

    let b = Server::start(&args("b"));
    for id in [&finished, &running, &queued] {
        assert!(has_prefix(id, "a"), "{id}");
        assert_eq!(b.task(id)["id"], **id, "replayed under its own id");
        let other = format!("b_{}", bare(id));
        assert_eq!(b.get(&format!("/tasks/{other}")).status, 404, "{other}");
        assert_eq!(b.get(&format!("/tasks/{}", bare(id))).status, 404);
    }
    assert_eq!(b.task(&finished)["state"], "succeeded");
    let new = b.submit("0s");
    assert!(has_prefix(&new, "b"), "{new}");
    assert!(
        bare(&new) > bare(&queued),
        "new ids still come after old ones"
    );
    let r = b.cancel(&queued);
    assert_eq!((r.status, &r.json()["state"]), (200, &"cancelled".into()));
    let r = b.cancel(&format!("b_{}", bare(&running)));
    assert_eq!(r.status, 404);
}

/// A server started with `NOTIFY_SOCKET`, and its stderr.
struct Notified {
    child: std::process::Child,
    /// Our end of the socket that is the server's stderr: a socket, not a
    /// pipe, so that it can be read without blocking.
    stderr: UnixStream,
    /// What the server has logged so far.
    log: String,
}

impl Notified {
    /// Starts the binary on a port the kernel picks with `NOTIFY_SOCKET`
    /// set to `socket`, without waiting for anything.
    fn spawn(socket: &str) -> Notified {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let child = command(
            &["--addr", "127.0.0.1:0", "--workers", "2"],
            &[],
            &[("NOTIFY_SOCKET", socket)],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::from(OwnedFd::from(theirs)))
        .spawn()
        .unwrap();
        Notified {
            child,
            stderr: ours,
            log: String::new(),
        }
    }

    /// Returns the address the server has logged, by now, that it listens
    /// on, if it has: what it wrote before is in the socket already.
    fn logged_addr(&mut self) -> Option<String> {
        let mut buf = [0u8; 4096];
        loop {
            match self.stderr.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.log.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("reading the server's stderr: {e}"),
            }
        }
        let rest = self.log.split("listening on http://").nth(1)?;
        Some(rest.split_whitespace().next()?.to_string())
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Receives one datagram as text.
fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("a datagram from the server");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Runs the server with `NOTIFY_SOCKET` = `name`, bound by the test as
/// `socket`: `READY=1` comes when the port already answers, `STOPPING=1`
/// after SIGTERM, and nothing else.
fn ready_then_stopping(socket: &UnixDatagram, name: &str) {
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut server = Notified::spawn(name);
    assert_eq!(receive(socket), "READY=1");
    // It logs that it listens, and then spawns the workers, before it
    // says it is ready: by now the line is there to read.
    let addr = server.logged_addr();
    let addr = addr.unwrap_or_else(|| panic!("READY=1 before listening:\n{}", server.log));
    // At once, without retrying: ready means answering.
    let mut stream = TcpStream::connect(addr).expect("ready means listening");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let request = post_request("/tasks", &[], r#"{"work_duration": "0s"}"#);
    stream.write_all(request.as_bytes()).unwrap();
    let r = read_response(&mut stream).unwrap();
    assert_eq!(r.status, 202, "{r:?}");
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    assert!(
        socket.recv(&mut [0u8; 64]).is_err(),
        "nothing before a signal"
    );
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let pid = rustix::process::Pid::from_raw(server.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, Signal::TERM).unwrap();
    assert_eq!(receive(socket), "STOPPING=1");
    assert_eq!(server.child.wait().unwrap().code(), Some(0));
}

#[test]
fn notify_socket_path_gets_ready_then_stopping() {
    let dir = TempDir::new("notify-path");
    let path = dir.path("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    ready_then_stopping(&socket, path.to_str().unwrap());
}

#[test]
fn notify_socket_abstract_name_gets_ready_then_stopping() {
    let name = format!("bgtasks-test-{}-notify", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    ready_then_stopping(&socket, &format!("@{name}"));
}

#[test]
fn an_unreachable_notify_socket_is_logged_and_the_server_runs_on() {
    let dir = TempDir::new("notify-missing");
    let path = dir.path("nobody-listens");
    let mut server = Server::start_with_env(&[], &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    server.wait_log("READY=1");
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.stop(Signal::TERM).0, Some(0));
}

#[test]
fn a_run_at_before_1970_is_in_the_past_and_means_at_once() {
    let server = Server::start(&[]);
    for run_at in [
        "1970-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "0001-01-01T00:00:00Z",
    ] {
        let body = format!(r#"{{"work_duration": "0s", "run_at": "{run_at}"}}"#);
        let r = server.post("/tasks", &body);
        assert_eq!(r.status, 202, "{run_at}: {}", r.text());
        assert_eq!(r.json()["state"], "queued", "{run_at}");
    }
}
