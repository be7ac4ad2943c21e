//! The harness every end-to-end test uses: it starts the real binary on a
//! port the kernel picks (`--addr 127.0.0.1:0`, the bound address read from
//! the log), speaks raw HTTP/1.1 over TCP, and kills the server when the
//! test ends, whatever happened.

#![allow(dead_code)] // Each test file uses a different part of the harness.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest any single step of a test waits before it fails: a
/// liveness bound, far above what any step takes on a busy machine (the
/// slowest, a compaction under a flood, takes up to 10 s beside two busy
/// loops on two cores).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// How many connections a test opens at once before it waits for the
/// server to take them: fewer than the listen backlog, which a larger
/// burst overflows, and the kernel then drops SYNs that take a second to
/// come again. The server asks for 1024, but the kernel caps it at
/// `net.core.somaxconn`, 128 by default before Linux 5.4.
const BURST: usize = 100;

/// A running bgtasks process.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    /// The thread that copies the server's stderr into `log`; taken when
    /// it has read to the end.
    reader: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts the binary with `args` (after `--addr 127.0.0.1:0`) and waits
    /// until it listens.
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    /// Starts the binary with `args` and extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::spawn(command(&["--addr", "127.0.0.1:0"], args, env))
    }

    /// Starts the binary on `addr` with `args`, and waits until it answers
    /// there: for a server that does not log the line `start` waits for.
    pub fn start_at(addr: SocketAddr, args: &[&str]) -> Server {
        let mut server = Server::launch(command(&["--addr", &addr.to_string()], args, &[]));
        server.addr = addr;
        eventually("the server to answer", || {
            let mut stream = TcpStream::connect(addr).ok()?;
            stream.set_read_timeout(Some(PATIENCE)).unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                .ok()?;
            read_response(&mut stream)
        });
        server
    }

    /// Starts the binary with `args` under an open-file limit of `nofile`.
    pub fn start_with_nofile(nofile: u32, args: &[&str]) -> Server {
        let mut cmd = command(&[], &[], &[]);
        let script = format!("ulimit -n {nofile} && exec \"$0\" \"$@\"");
        let mut shell = Command::new("sh");
        shell
            .arg("-c")
            .arg(script)
            .arg(cmd.get_program())
            .args(["--addr", "127.0.0.1:0"])
            .args(args);
        for (name, value) in cmd.get_envs() {
            match value {
                Some(v) => shell.env(name, v),
                None => shell.env_remove(name),
            };
        }
        cmd = shell;
        Server::spawn(cmd)
    }

    /// Spawns a prepared command (one that ends up running the binary with
    /// `--addr 127.0.0.1:0`) and waits until the server listens.
    pub fn spawn_command(cmd: Command) -> Server {
        Server::spawn(cmd)
    }

    /// Spawns a prepared command and waits until the server listens.
    fn spawn(cmd: Command) -> Server {
        let mut server = Server::launch(cmd);
        let line = server.wait_log("listening on http://");
        let addr = line
            .split("listening on http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        server.addr = addr;
        server
    }

    /// Spawns a prepared command, collecting what it logs.
    fn launch(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the test binary starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Server {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            log,
            reader: Some(reader),
        }
    }

    /// Returns everything the server has logged so far; once it has
    /// exited (`stop`, `kill`, `wait_exit`), everything it logged.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits, after the server has exited, until its log has been read to
    /// the end: the last lines may still be in the pipe.
    fn read_log_to_end(&mut self) {
        let Some(reader) = self.reader.take() else {
            return;
        };
        eventually("the end of the server's stderr", || {
            reader.is_finished().then_some(())
        });
        // It has finished; an error would only say that it panicked, and
        // the log it kept until then is all there is.
        let _ = reader.join();
    }

    /// Waits until a log line contains `needle`, and returns that line.
    pub fn wait_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        let find = |log: String| log.lines().find(|l| l.contains(needle)).map(str::to_string);
        loop {
            if let Some(line) = find(self.log()) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.read_log_to_end();
                return find(self.log()).unwrap_or_else(|| {
                    panic!(
                        "server exited ({status}) without logging {needle:?}:\n{}",
                        self.log()
                    )
                });
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Opens a new connection.
    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect to the server");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }

    /// Sends raw bytes on a new connection and reads one response.
    pub fn raw(&self, request: &[u8]) -> Response {
        let mut stream = self.connect();
        stream.write_all(request).unwrap();
        read_response(&mut stream).expect("a response")
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Response {
        self.raw(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
    }

    /// `POST path` with a body.
    pub fn post(&self, path: &str, body: &str) -> Response {
        self.raw(post_request(path, &[], body).as_bytes())
    }

    /// `POST path` with extra header lines and a body.
    pub fn post_with(&self, path: &str, headers: &[&str], body: &str) -> Response {
        self.raw(post_request(path, headers, body).as_bytes())
    }

    /// Queues a `sleep` task and returns its id.
    pub fn submit(&self, duration: &str) -> String {
        self.submit_labelled("t", duration)
    }

    /// Queues a `sleep` task with a label and returns its id.
    pub fn submit_labelled(&self, label: &str, duration: &str) -> String {
        let body = format!(r#"{{"task_id": "{label}", "work_duration": "{duration}"}}"#);
        let r = self.post("/tasks", &body);
        assert_eq!(r.status, 202, "{r:?}");
        r.json()["id"].as_str().unwrap().to_string()
    }

    /// Occupies a single worker with a long task and fills a queue of
    /// `buffer` places behind it; returns the running task's id.
    pub fn fill(&self, buffer: usize) -> String {
        let running = self.submit("60s");
        self.wait_state(&running, "running");
        for _ in 0..buffer {
            self.submit("60s");
        }
        running
    }

    /// Reads a task's status.
    pub fn task(&self, id: &str) -> serde_json::Value {
        let r = self.get(&format!("/tasks/{id}"));
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
    }

    /// Returns one queue's object from `GET /queues`.
    pub fn queue(&self, name: &str) -> serde_json::Value {
        let r = self.get("/queues");
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .unwrap_or_else(|| panic!("no queue {name:?} in {}", r.text()))
            .clone()
    }

    /// `POST /tasks/{id}/cancel`.
    pub fn cancel(&self, id: &str) -> Response {
        self.post(&format!("/tasks/{id}/cancel"), "")
    }

    /// Polls a task until its state is `state`; returns its status.
    pub fn wait_state(&self, id: &str, state: &str) -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let task = self.task(id);
            if task["state"] == state {
                return task;
            }
            assert!(
                Instant::now() < deadline,
                "task never became {state}: {task}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Polls a task until it is in a state it never leaves; returns its
    /// status.
    pub fn wait_done(&self, id: &str) -> serde_json::Value {
        eventually("the task to finish", || {
            let task = self.task(id);
            matches!(
                task["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
            .then_some(task)
        })
    }

    /// Reads one metric's value from `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        let body = self.get("/metrics").text();
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {name} in {body}"))
            .parse()
            .unwrap()
    }

    /// Polls one metric until it has `value`.
    pub fn wait_metric(&self, name: &str, value: f64) {
        eventually(&format!("{name} to be {value}"), || {
            (self.metric(name) == value).then_some(())
        });
    }

    /// Sends a signal to the server.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Sends `signal` and waits for the server to exit; returns its exit
    /// code and how long it took from the signal.
    pub fn stop(&mut self, signal: rustix::process::Signal) -> (Option<i32>, Duration) {
        let started = Instant::now();
        self.signal(signal);
        let status = self.wait_exit(PATIENCE).expect("the server exits");
        (status.code(), started.elapsed())
    }

    /// Waits up to `limit` for the server to exit (and its log to be read).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.read_log_to_end();
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the server with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.read_log_to_end();
    }

    /// Opens `count` connections that each long-poll the task `id` for
    /// `wait`, and returns them once the server has read every request, so
    /// each is waiting on the state the task has now.
    pub fn long_polls(&self, id: &str, wait: &str, count: usize) -> Vec<TcpStream> {
        let request = format!("GET /tasks/{id}?wait={wait} HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut polls: Vec<TcpStream> = Vec::with_capacity(count);
        while polls.len() < count {
            let batch = (count - polls.len()).min(BURST);
            polls.extend((0..batch).map(|_| {
                let mut stream = self.connect();
                stream.write_all(request.as_bytes()).unwrap();
                stream
            }));
            eventually("the server to read every long poll", || {
                self.has_read(&polls).then_some(())
            });
        }
        polls
    }

    /// Opens `count` connections that send nothing, [`BURST`] at a time,
    /// each lot accepted by the server before the next.
    pub fn connect_many(&self, count: usize) -> Vec<TcpStream> {
        let mut streams = Vec::with_capacity(count);
        while streams.len() < count {
            let open = self.open_fds();
            let batch = (count - streams.len()).min(BURST);
            streams.extend((0..batch).map(|_| self.connect()));
            eventually("the server to accept every connection", || {
                (self.open_fds() >= open + batch).then_some(())
            });
        }
        streams
    }

    /// Returns how many file descriptors the server has open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }

    /// Tells whether the server has read everything sent so far on each of
    /// `streams`: the kernel's receive queue of the server's end of every
    /// one of those connections is empty (`rx_queue` in /proc/net/tcp).
    ///
    /// Only the server's own reads empty that queue, so this cannot come
    /// true by accident, however busy the machine; a connection still in
    /// the listen backlog, or not yet established, counts as unread.
    pub fn has_read(&self, streams: &[TcpStream]) -> bool {
        let ours: HashSet<u16> = streams
            .iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect();
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let mut read = 0;
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let established = fields[3] == "01";
            if !established
                || table_port(fields[1]) != self.addr.port()
                || !ours.contains(&table_port(fields[2]))
            {
                continue;
            }
            let (_, unread) = fields[4].split_once(':').unwrap();
            if u32::from_str_radix(unread, 16).unwrap() != 0 {
                return false;
            }
            read += 1;
        }
        read == ours.len()
    }

    /// Tells whether the server still holds `stream`'s connection (over
    /// IPv4) open: its end is established (`/proc/net/tcp`). An end the
    /// server has shut or closed is not, whatever is still buffered in it.
    pub fn holds(&self, stream: &TcpStream) -> bool {
        let ours = stream.local_addr().unwrap().port();
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields[3] == "01"
                && table_port(fields[1]) == self.addr.port()
                && table_port(fields[2]) == ours
        })
    }
}

/// Returns the port of an address in `/proc/net/tcp` (`0100007F:1F40`).
fn table_port(address: &str) -> u16 {
    let (_, port) = address.rsplit_once(':').unwrap();
    u16::from_str_radix(port, 16).unwrap()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory for one test's files, removed when the test ends.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Makes an empty directory named after the test and this process.
    pub fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("bgtasks-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Returns the path of `name` inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Returns the path of `name` inside the directory as text, for a flag
    /// or a script.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    /// Writes an executable `sh` script and returns its path.
    pub fn script(&self, name: &str, body: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = self.arg(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Reads a file of the directory, empty if it does not exist.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Returns the server binary under test: `BGTASKS_BIN` when set (the
/// static build in `.ci/run`, or another build to compare), else the one
/// cargo built with the tests.
pub fn binary() -> PathBuf {
    std::env::var_os("BGTASKS_BIN")
        .filter(|path| !path.is_empty())
        .map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_bgtasks")),
            PathBuf::from,
        )
}

/// Builds a command for the binary, with a clean environment of ours:
/// none of the variables the server reads but those given (`JOURNAL_STREAM`
/// too, which turns log timestamps off when the tests run under journald).
pub fn command(first: &[&str], args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.args(first).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("BGTASKS_") || name == "RUST_LOG" || name == "JOURNAL_STREAM" {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// CRC-32 (IEEE), bit by bit: the journal's checksum, written here
/// independently of the server's table-driven one.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                0xedb8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Makes a journal line from a record's JSON: its checksum, then the JSON.
pub fn journal_line(json: &str) -> String {
    format!("{:08x} {json}\n", crc32(json.as_bytes()))
}

/// Builds a `POST` with a body and extra header lines.
pub fn post_request(path: &str, headers: &[&str], body: &str) -> String {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head + "\r\n" + body
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// Returns the value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Returns the body as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    /// Parses the body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
}

/// Reads one response (skipping `100 Continue`); `None` if the connection
/// closed before a status line. Every response must have Content-Length.
pub fn read_response(stream: &mut TcpStream) -> Option<Response> {
    loop {
        let response = read_one(stream)?;
        if response.status != 100 {
            return Some(response);
        }
    }
}

/// Reads one response, interim ones included.
pub fn read_one(stream: &mut TcpStream) -> Option<Response> {
    let mut response = read_head(stream)?;
    if response.status == 100 {
        return Some(response);
    }
    let length: usize = response
        .header("content-length")
        .unwrap_or_else(|| panic!("no Content-Length: {response:?}"))
        .parse()
        .unwrap();
    response.body = vec![0; length];
    stream.read_exact(&mut response.body).unwrap();
    Some(response)
}

/// Reads a response's head only (its body is left unread, and empty in the
/// result); `None` if the connection closed before a status line.
pub fn read_head(stream: &mut TcpStream) -> Option<Response> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ if head.is_empty() => return None,
            other => panic!(
                "connection ended inside a response head: {other:?} after {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let head = String::from_utf8(head).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(
        status_line.starts_with("HTTP/1.1 "),
        "status line {status_line:?}"
    );
    Some(Response {
        status: status_line[9..12].parse().unwrap(),
        headers: lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_string(), v.trim().to_string())
            })
            .collect(),
        body: Vec::new(),
    })
}

/// Tells whether the server closes the connection (EOF or reset) within
/// `within`; data or silence until then means it did not.
pub fn closes(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1];
    let result = stream.read(&mut byte);
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    match result {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Polls `check` until it returns `Some`, failing after [`PATIENCE`].
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Server {
    /// Returns the server's resident memory in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// Returns the CPU time the server has used (user + system), in clock
    /// ticks (1/100 s on Linux).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// Sends `count` requests made by `body(i)` as `POST path`, pipelined in
    /// batches over `conns` connections; returns how many got each status.
    pub fn pipeline(
        &self,
        path: &str,
        count: usize,
        conns: usize,
        body: impl Fn(usize) -> String + Sync,
    ) -> std::collections::BTreeMap<u16, usize> {
        const BATCH: usize = 256;
        let statuses = Mutex::new(std::collections::BTreeMap::new());
        std::thread::scope(|scope| {
            for c in 0..conns {
                let (statuses, body) = (&statuses, &body);
                scope.spawn(move || {
                    let mut stream = self.connect();
                    let mut reader = BufReader::with_capacity(1 << 16, stream.try_clone().unwrap());
                    let mine: Vec<usize> = (c..count).step_by(conns).collect();
                    let mut local = std::collections::BTreeMap::new();
                    for batch in mine.chunks(BATCH) {
                        let mut out = Vec::new();
                        for &i in batch {
                            out.extend_from_slice(post_request(path, &[], &body(i)).as_bytes());
                        }
                        stream.write_all(&out).unwrap();
                        for _ in batch {
                            *local.entry(read_status(&mut reader)).or_insert(0) += 1;
                        }
                    }
                    let mut all = statuses.lock().unwrap();
                    for (status, n) in local {
                        *all.entry(status).or_insert(0) += n;
                    }
                });
            }
        });
        statuses.into_inner().unwrap()
    }
}

/// Reads one response from a buffered reader and returns its status.
pub fn read_status(reader: &mut BufReader<TcpStream>) -> u16 {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line[9..12].parse().unwrap();
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    status
}

/// Raises this process's open-file limit to its hard limit, for tests that
/// hold many connections (the server inherits it).
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

/// Returns the milliseconds since the epoch of an RFC 3339 UTC timestamp.
pub fn epoch_millis(v: &serde_json::Value) -> i64 {
    let s = v.as_str().unwrap();
    let n = |at: usize, len: usize| s[at..at + len].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(5, 2), n(8, 2));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    ((days * 24 + n(11, 2)) * 60 + n(14, 2)) * 60_000 + n(17, 2) * 1000 + n(20, 3)
}

/// A small, seeded random number generator (xorshift64*), so that tests
/// with random input or timing need no crate and every failure replays.
pub struct Rng(pub u64);

impl Rng {
    /// Returns the next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Sorts timings and describes them for a benchmark's line: median, 90th
/// percentile and worst, and how many there were.
pub fn spread(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |fraction: f64| samples[((samples.len() - 1) as f64 * fraction).round() as usize];
    format!(
        "median {:?}, p90 {:?}, max {:?} ({} samples)",
        at(0.5),
        at(0.9),
        at(1.0),
        samples.len()
    )
}

/// An open `GET /events` stream (SPEC §11), read one event at a time. It
/// checks the framing as it reads: every chunk's size is right and holds
/// exactly one whole event or comment.
pub struct EventStream {
    /// The connection.
    pub stream: TcpStream,
    /// The answer's status line and headers.
    pub head: Response,
    /// Bytes read and not yet taken as events.
    buf: Vec<u8>,
    /// Events of a chunk read and not yet taken.
    pending: std::collections::VecDeque<Event>,
    /// Whether the body is chunked (HTTP/1.1) or ends at close (HTTP/1.0).
    chunked: bool,
}

/// One event of a stream: `name` is `""` for a comment (`: keep-alive`),
/// whose `data` is null.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub data: serde_json::Value,
    /// The event's text as sent, blank line included.
    pub text: String,
}

/// What a stream said next.
#[derive(Debug)]
pub enum Next {
    /// An event or a comment.
    Event(Event),
    /// The zero-length chunk that ends a chunked body.
    End,
    /// The connection closed (the end of an HTTP/1.0 stream).
    Closed,
    /// Nothing whole came in the time given.
    Silent,
}

impl Server {
    /// Opens `GET /events{query}` and reads its head, which must be a `200`.
    pub fn events(&self, query: &str) -> EventStream {
        let request = format!("GET /events{query} HTTP/1.1\r\nHost: t\r\n\r\n");
        EventStream::open(self.connect(), request.as_bytes())
    }
}

impl EventStream {
    /// Sends `request` (a `GET /events`) and reads the answer's head, which
    /// must be a `200`.
    pub fn open(mut stream: TcpStream, request: &[u8]) -> EventStream {
        stream.write_all(request).unwrap();
        let head = read_head(&mut stream).expect("the stream's head");
        assert_eq!(head.status, 200, "{head:?}");
        let chunked = head.header("transfer-encoding") == Some("chunked");
        EventStream {
            stream,
            head,
            buf: Vec::new(),
            pending: std::collections::VecDeque::new(),
            chunked,
        }
    }

    /// Reads the next event, failing the test if none comes within
    /// [`PATIENCE`] or the stream ends.
    pub fn event(&mut self) -> Event {
        match self.next(PATIENCE) {
            Next::Event(event) => event,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Reads events until one named `name`, which it returns.
    pub fn until(&mut self, name: &str) -> Event {
        loop {
            let event = self.event();
            if event.name == name {
                return event;
            }
        }
    }

    /// Reads what the stream says next, waiting at most `within`.
    pub fn next(&mut self, within: Duration) -> Next {
        let deadline = Instant::now() + within;
        loop {
            if let Some(next) = self.take() {
                return next;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Next::Silent;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 1 << 16];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    assert!(
                        self.buf.is_empty(),
                        "closed inside a chunk: {:?}",
                        self.rest()
                    );
                    return Next::Closed;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading the stream: {e}"),
            }
        }
    }

    /// Takes one event from what was read: from a whole chunk (which must
    /// hold whole events, one or more) or, unchunked, up to a blank line.
    fn take(&mut self) -> Option<Next> {
        if let Some(event) = self.pending.pop_front() {
            return Some(Next::Event(event));
        }
        if !self.chunked {
            let end = self.buf.windows(2).position(|w| w == b"\n\n")? + 2;
            let text: Vec<u8> = self.buf.drain(..end).collect();
            return Some(Next::Event(parse_event(&text)));
        }
        let line_end = self.buf.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&self.buf[..line_end]).unwrap();
        let size = usize::from_str_radix(line, 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {:?}", self.rest()));
        let start = line_end + 2;
        if self.buf.len() < start + size + 2 {
            return None;
        }
        assert_eq!(
            &self.buf[start + size..start + size + 2],
            b"\r\n",
            "a chunk's size is wrong: {:?}",
            self.rest()
        );
        let text: Vec<u8> = self.buf[start..start + size].to_vec();
        self.buf.drain(..start + size + 2);
        if size == 0 {
            return Some(Next::End);
        }
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.ends_with("\n\n"),
            "a chunk that is not whole events: {text:?}"
        );
        self.pending.extend(
            text.split_inclusive("\n\n")
                .map(|event| parse_event(event.as_bytes())),
        );
        self.pending.pop_front().map(Next::Event)
    }

    /// Returns what was read and not taken, for messages.
    fn rest(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

/// Parses one event's text, which must be exactly one event (`event:`
/// and `data:` lines) or one comment, ended by a blank line.
fn parse_event(text: &[u8]) -> Event {
    let text = String::from_utf8(text.to_vec()).unwrap();
    let body = text
        .strip_suffix("\n\n")
        .unwrap_or_else(|| panic!("not one whole event: {text:?}"));
    assert!(!body.contains("\n\n"), "two events as one: {text:?}");
    if body.starts_with(':') {
        assert!(!body.contains('\n'), "a comment of many lines: {text:?}");
        return Event {
            name: String::new(),
            data: serde_json::Value::Null,
            text,
        };
    }
    let (name, data) = body
        .strip_prefix("event: ")
        .and_then(|rest| rest.split_once("\ndata: "))
        .unwrap_or_else(|| panic!("not an event: {text:?}"));
    assert!(!data.contains('\n'), "data of many lines: {text:?}");
    let data = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    Event {
        name: name.to_string(),
        data,
        text,
    }
}
