//! The client's side of HTTP/1.1 (SPEC §16): where the server is
//! (`--server`), and one exchange with it per connection — connecting,
//! writing the request, reading the answer's head and body, or an event
//! stream event by event — every wait bounded.
//!
//! It prints nothing and knows no command: it hands [`crate::client`] an
//! [`Answer`], or a stream's events one at a time, and when the server
//! cannot be reached or does not answer in HTTP it says so (through
//! [`fail`]) and ends the command with status 3. The server's request
//! codec, [`crate::http`], is the other end of the wire; from it this
//! borrows only pure pieces, so that both ends read bytes the same way:
//! its head scanner ([`find_head_end`]), [`parse_content_length`] and its
//! chunked decoder ([`Chunked`]). The status line and the header lines are
//! read by a small scan of its own: the server parses requests, and its
//! strict field checks, inlined a second time, would cost the client more
//! than they guard against a server it chose to talk to.
//!
//! # Why a blocking socket
//!
//! A command makes one request at a time and waits for its answer, so a
//! blocking `std::net::TcpStream` says it in straight-line code; `async-io`
//! would start its reactor (a thread and an epoll set) with nothing to run
//! beside the one request, and std's socket is in the binary already (the
//! listener is one), which keeps the client small. Every wait is bounded
//! all the same: connecting by [`CONNECT_TIMEOUT`], each answer by one
//! deadline (set as the socket's read timeout before every read, so a
//! server that trickles bytes cannot stretch it), an event stream by
//! [`EVENTS_SILENCE`] between reads. A server that stops answering, or a
//! peer that does not speak HTTP, ends the command with status 3; it never
//! hangs it.
//!
//! # No host names
//!
//! `--server` takes an IP address, as the server's `--addr` does, and
//! `localhost`, which is 127.0.0.1. Resolving names would need the C
//! library's resolver (`getaddrinfo`): 3 KiB of this binary, and one that
//! a binary linked statically against glibc can load only from the glibc
//! it was built with. Any other name is a usage error (exit 2) that says
//! so.

use std::fmt::{Arguments, Write as _};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::client_output::{Exit, Members, exit, fail, plain};
use crate::config::MAX_MAX_BODY;
use crate::http::{ChunkState, Chunked, HttpError, MAX_HEAD, find_head_end, parse_content_length};

/// How long connecting may take: a server that is up accepts in
/// milliseconds, and 10 s outlasts two lost SYNs (resent after 1 s, then
/// 3 s more), so past it the server is taken for unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an answer may take beyond what was asked of it (a long poll's
/// wait), and each write of a request: the server answers at once, or
/// after its journal's fsync, and 30 s is a disk far slower than any it
/// will meet.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an event stream may stay silent before the server is taken
/// for gone: three of the server's 15 s keep-alive comments.
const EVENTS_SILENCE: Duration = Duration::from_secs(45);

/// The largest answer, or event, the client reads. A task's status and
/// events echo its label, which a request body of up to 64 MiB (the
/// largest `--max-body`) can make that large; twice that leaves room for
/// the rest, and still bounds what a peer that is not bgtasks can make the
/// client hold.
const MAX_ANSWER: usize = 2 * MAX_MAX_BODY;

/// Where the server is, and what every request to it carries.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Server {
    /// The URL as given, for messages.
    url: String,
    /// The address to connect to.
    address: SocketAddr,
    /// A path every request's path follows (a proxy's location), without
    /// its last `/`.
    base: String,
    /// The header lines every request carries: `Host` (the URL's host and
    /// port as given), `User-Agent` and, with a token, `Authorization`.
    headers: String,
}

/// An answer of the server.
#[derive(Debug)]
pub(crate) struct Answer {
    /// Its status code.
    pub(crate) status: u16,
    /// Its body.
    pub(crate) body: Vec<u8>,
}

impl Answer {
    /// Makes an answer.
    fn new(status: u16, body: Vec<u8>) -> Answer {
        Answer { status, body }
    }

    /// Returns the body if the status is a success, else the refusal.
    pub(crate) fn accepted(&self) -> Result<&[u8], Exit> {
        match self.status {
            200..=299 => Ok(&self.body),
            _ => Err(self.refused()),
        }
    }

    /// Says that the server refused the request, in its own sentence if
    /// it sent one.
    pub(crate) fn refused(&self) -> Exit {
        let object = std::str::from_utf8(&self.body)
            .ok()
            .and_then(Members::parse);
        let status = self.status;
        match object.as_ref().and_then(|m| m.get("error")) {
            Some(sentence) => fail(
                exit::REFUSED,
                format_args!("{} (HTTP {status})", plain(sentence)),
            ),
            None => fail(
                exit::REFUSED,
                format_args!("the server answered HTTP {status}"),
            ),
        }
    }
}

/// How a response's body is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delimiter {
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body ends when the connection closes.
    Close,
}

/// A response's head: what the client needs of it.
#[derive(Debug, PartialEq, Eq)]
struct ResponseHead {
    /// The status code.
    status: u16,
    /// How the body is delimited.
    delimiter: Delimiter,
}

impl Server {
    /// Parses `--server`: `http://HOST[:PORT][/PATH]`, or the same without
    /// `http://`; HOST is a name, an IPv4 address or a bracketed IPv6 one.
    pub(crate) fn parse(url: &str, token: Option<String>) -> Result<Server, String> {
        let (scheme, rest) = match url.split_once(':') {
            Some((scheme, rest)) if rest.starts_with("//") => (scheme, &rest[2..]),
            _ => ("http", url),
        };
        if same(scheme.as_bytes(), b"https") {
            return Err(format!(
                "--server {url:?}: bgtasks speaks plain HTTP; to reach a server over TLS, \
                 put a TLS-terminating proxy (nginx, Caddy, stunnel) on this side and give \
                 its http:// address"
            ));
        }
        let (authority, base) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let plain = rest
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'@' | b'?' | b'#'));
        match split_host_port(authority) {
            Some(address) if plain && same(scheme.as_bytes(), b"http") => {
                let version = env!("CARGO_PKG_VERSION");
                let mut headers = format!("Host: {authority}\r\nUser-Agent: bgtasks/{version}\r\n");
                if let Some(token) = token {
                    let _ = write!(headers, "Authorization: Bearer {token}\r\n");
                }
                Ok(Server {
                    url: url.to_string(),
                    address,
                    base: base.trim_end_matches('/').to_string(),
                    headers,
                })
            }
            _ => Err(format!(
                "--server {url:?} is not http://IP[:PORT] such as http://127.0.0.1:8000 \
                 (localhost is 127.0.0.1; host names are not resolved)"
            )),
        }
    }

    /// Says that the server cannot be reached, or did not answer in HTTP.
    #[inline(never)]
    fn gone(&self, what: Arguments) -> Exit {
        fail(
            exit::UNREACHABLE,
            format_args!("the server at {} {what}", self.url),
        )
    }

    /// Says that the connection failed while reading or writing.
    fn lost(&self, e: &io::Error) -> Exit {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                self.gone(format_args!("did not answer in time"))
            }
            _ => self.gone(format_args!("broke the connection: {e}")),
        }
    }

    /// Connects to the server and sends one request; returns the
    /// connection, its answer to come.
    fn send(&self, method: &str, path: &str, body: &[u8]) -> Result<TcpStream, Exit> {
        TcpStream::connect_timeout(&self.address, CONNECT_TIMEOUT)
            .and_then(|mut stream| {
                stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
                stream.write_all(&self.request(method, path, body))?;
                Ok(stream)
            })
            .map_err(|e| self.gone(format_args!("cannot be reached: {e}")))
    }

    /// Writes a request. Each request has its own connection
    /// (`Connection: close`), so an answer ends where its connection does
    /// if nothing else says so.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
        let (base, headers) = (&self.base, &self.headers);
        let mut head = format!("{method} {base}{path} HTTP/1.1\r\n{headers}");
        if method == "POST" {
            let length = body.len();
            let _ = write!(
                head,
                "Content-Type: application/json\r\nContent-Length: {length}\r\n"
            );
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        out
    }

    /// Makes one request and reads its whole answer, which must come
    /// within `patience`.
    pub(crate) fn ask(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        patience: Duration,
    ) -> Result<Answer, Exit> {
        let deadline = Instant::now() + patience;
        let mut stream = self.send(method, path, body)?;
        let mut input = Vec::new();
        let head = self.read_head(&mut stream, &mut input, deadline)?;
        let body = self.read_body(&mut stream, head.delimiter, input, deadline)?;
        Ok(Answer::new(head.status, body))
    }

    /// Reads an answer's head, leaving in `input` what came after it.
    fn read_head(
        &self,
        stream: &mut TcpStream,
        input: &mut Vec<u8>,
        deadline: Instant,
    ) -> Result<ResponseHead, Exit> {
        let mut scanned = 0;
        loop {
            if let Some(end) = find_head_end(input, scanned) {
                let head = parse_response_head(&input[..end])
                    .map_err(|e| self.gone(format_args!("did not answer in HTTP: {e}")))?;
                input.drain(..end);
                return Ok(head);
            }
            if input.len() > MAX_HEAD {
                return Err(self.gone(format_args!("sent an answer head over 16 KiB")));
            }
            scanned = input.len();
            if read_more(stream, input, deadline).map_err(|e| self.lost(&e))? == 0 {
                let what = match input.is_empty() {
                    true => "closed the connection without an answer",
                    false => "did not answer in HTTP: its answer ends inside its head",
                };
                return Err(self.gone(format_args!("{what}")));
            }
        }
    }

    /// Reads an answer's body, given what came with its head.
    fn read_body(
        &self,
        stream: &mut TcpStream,
        delimiter: Delimiter,
        mut input: Vec<u8>,
        deadline: Instant,
    ) -> Result<Vec<u8>, Exit> {
        let mut decoder = Decoder::new(delimiter);
        let mut body = Vec::new();
        loop {
            let done = decoder
                .decode(&input, &mut body)
                .map_err(|e| self.gone(format_args!("did not answer in HTTP: {e}")))?;
            if done {
                return Ok(body);
            }
            input.clear();
            if read_more(stream, &mut input, deadline).map_err(|e| self.lost(&e))? == 0 {
                return match delimiter {
                    Delimiter::Close => Ok(body),
                    _ => Err(self.gone(format_args!("closed the connection inside an answer"))),
                };
            }
        }
    }

    /// Asks for the event stream at `path`. Its head must come within
    /// [`ANSWER_TIMEOUT`]; a refusal is read whole, and said.
    pub(crate) fn events(&self, path: &str) -> Result<EventStream<'_>, Exit> {
        let mut stream = self.send("GET", path, b"")?;
        let mut input = Vec::new();
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let head = self.read_head(&mut stream, &mut input, deadline)?;
        if head.status != 200 {
            let body = self.read_body(&mut stream, head.delimiter, input, deadline)?;
            return Err(Answer::new(head.status, body).refused());
        }
        Ok(EventStream {
            server: self,
            stream,
            input,
            decoder: Decoder::new(head.delimiter),
            events: EventText::default(),
        })
    }
}

/// An event stream being read: its connection, and what has come of it.
pub(crate) struct EventStream<'a> {
    /// The server it comes from, for messages.
    server: &'a Server,
    /// The connection it comes on.
    stream: TcpStream,
    /// Bytes read and not yet decoded.
    input: Vec<u8>,
    /// Where reading its body is.
    decoder: Decoder,
    /// Its body, decoded and not yet taken as events.
    events: EventText,
}

impl EventStream<'_> {
    /// Returns the next event, as its name and data, waiting for it as
    /// long as the server sends something (an event, or a keep-alive
    /// comment) every [`EVENTS_SILENCE`]. A stream the server ends, or
    /// breaks, ends the command.
    pub(crate) fn read_event(&mut self) -> Result<(String, String), Exit> {
        let server = self.server;
        loop {
            // When the last call left events to take, `input` is empty:
            // decoding nothing says again whether the body has ended.
            let ended = self
                .decoder
                .decode(&self.input, &mut self.events.text)
                .map_err(|e| server.gone(format_args!("did not answer in HTTP: {e}")))?;
            self.input.clear();
            if let Some(event) = self.events.next_event() {
                return Ok(event);
            }
            if ended {
                return Err(server.gone(format_args!("ended the event stream unasked")));
            }
            let silence = Instant::now() + EVENTS_SILENCE;
            if read_more(&mut self.stream, &mut self.input, silence).map_err(|e| server.lost(&e))?
                == 0
            {
                return Err(server.gone(format_args!("closed the event stream")));
            }
        }
    }
}

/// The text of an event stream as it arrives, cut into events
/// (Server-Sent Events: lines, and a blank line after each event).
#[derive(Default)]
struct EventText {
    /// Text read and not yet taken as events.
    text: Vec<u8>,
}

impl EventText {
    /// Takes the next whole event, as its name and data; comments
    /// (`: keep-alive`) are skipped. Lines end with LF, as the server
    /// writes them.
    fn next_event(&mut self) -> Option<(String, String)> {
        loop {
            let end = self.text.windows(2).position(|w| w == b"\n\n")?;
            let rest = self.text.split_off(end + 2);
            let event = std::mem::replace(&mut self.text, rest);
            let (mut name, mut data): (&[u8], Option<Vec<u8>>) = (b"", None);
            for line in event.split(|&b| b == b'\n') {
                let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
                let value = line.get(colon + 1..).unwrap_or_default();
                let value = value.strip_prefix(b" ").unwrap_or(value);
                match (&line[..colon], &mut data) {
                    (b"event", _) => name = value,
                    (b"data", Some(data)) => {
                        data.push(b'\n');
                        data.extend_from_slice(value);
                    }
                    (b"data", None) => data = Some(value.to_vec()),
                    _ => {}
                }
            }
            if !name.is_empty() || data.is_some() {
                let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
                let name = if name.is_empty() { b"message" } else { name };
                return Some((text(name), text(&data.unwrap_or_default())));
            }
        }
    }
}

/// Reads `IP[:PORT]` (an IPv6 address in brackets; `localhost` is
/// 127.0.0.1); the port is 80 if none is given, and may not be 0.
fn split_host_port(authority: &str) -> Option<SocketAddr> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port.parse().ok()?),
        _ => (authority, 80u16),
    };
    let host = if same(host.as_bytes(), b"localhost") {
        "127.0.0.1"
    } else {
        host
    };
    let address: SocketAddr = format!("{host}:{port}").parse().ok()?;
    (port > 0).then_some(address)
}

/// Reads what has arrived into `input`, waiting until `deadline` at most;
/// returns how many bytes came (0: the server closed the connection).
fn read_more(stream: &mut TcpStream, input: &mut Vec<u8>, deadline: Instant) -> io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))?;
    let mut chunk = [0u8; 16 << 10];
    loop {
        match stream.read(&mut chunk) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            read => {
                let n = read?;
                input.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
        }
    }
}

/// Parses a response head (status line, header lines, blank line): its
/// status and how its body is delimited. Only `Content-Length` and
/// `Transfer-Encoding` are read; a line without a colon is skipped. The
/// error says what is wrong.
fn parse_response_head(head: &[u8]) -> Result<ResponseHead, &'static str> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status = lines.next().and_then(parse_status_line);
    let status = status.ok_or("its status line is malformed")?;
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if same(name, b"content-length") {
            let n = parse_content_length(value).map_err(HttpError::message)?;
            if length.is_some_and(|l| l != n) {
                return Err("its answer has two different Content-Lengths");
            }
            length = Some(n);
        } else if same(name, b"transfer-encoding") {
            // RFC 9112 §6.3: chunked, when it is the last coding.
            let last = value.len().saturating_sub(7);
            chunked = same(&value[last..], b"chunked");
        }
    }
    let delimiter = match (chunked, length) {
        (true, _) => Delimiter::Chunked,
        (false, Some(n)) => Delimiter::Length(n),
        (false, None) => Delimiter::Close,
    };
    Ok(ResponseHead { status, delimiter })
}

/// Reads a status line (RFC 9112 §4): `HTTP/1.1` or `HTTP/1.0`, a space,
/// three digits, then a space and a reason phrase, or nothing. Returns the
/// status code.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))?;
    let (code, reason) = rest.split_at_checked(3)?;
    if !code.iter().all(u8::is_ascii_digit) || !matches!(reason.first(), None | Some(b' ')) {
        return None;
    }
    let code = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    (100..=599).contains(&code).then_some(code)
}

/// Where reading an answer's body is: by its length, by the server's
/// chunked decoder, or to the connection's end.
enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked; the decoder keeps its place between reads.
    Chunked(Box<Chunked>),
    /// Everything until the connection closes.
    Close,
}

impl Decoder {
    /// Starts reading a body delimited so.
    fn new(delimiter: Delimiter) -> Decoder {
        match delimiter {
            Delimiter::Length(n) => Decoder::Length(n),
            Delimiter::Chunked => Decoder::Chunked(Box::default()),
            Delimiter::Close => Decoder::Close,
        }
    }

    /// Appends to `out` the body in `input`, all of which has arrived;
    /// returns whether the body is complete. What follows a complete body
    /// is dropped: every request says `Connection: close`.
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<bool, &'static str> {
        let done = match self {
            Decoder::Length(left) => {
                let take = (*left).min(input.len() as u64);
                out.extend_from_slice(&input[..take as usize]);
                *left -= take;
                *left == 0
            }
            Decoder::Chunked(chunked) => {
                chunked
                    .feed(input, MAX_ANSWER)
                    .map_err(|_| "its chunked body is malformed or too large")?;
                out.append(&mut chunked.body);
                chunked.state == ChunkState::Done
            }
            Decoder::Close => {
                out.extend_from_slice(input);
                false
            }
        };
        match out.len() > MAX_ANSWER {
            true => Err("its answer is larger than any bgtasks sends"),
            false => Ok(done),
        }
    }
}

/// Tells whether two names are the same but for the case of ASCII
/// letters.
#[inline(never)]
fn same(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_name_an_address_and_a_path() {
        /// A URL, and the address to connect to, the `Host` header and the
        /// path prefix.
        type Case<'a> = (&'a str, Option<(&'a str, &'a str, &'a str)>);
        let cases: &[Case] = &[
            (
                "http://127.0.0.1:8000",
                Some(("127.0.0.1:8000", "127.0.0.1:8000", "")),
            ),
            ("HTTP://10.0.0.1", Some(("10.0.0.1:80", "10.0.0.1", ""))),
            ("localhost:9", Some(("127.0.0.1:9", "localhost:9", ""))),
            ("http://LocalHost", Some(("127.0.0.1:80", "LocalHost", ""))),
            ("http://[::1]:8000/", Some(("[::1]:8000", "[::1]:8000", ""))),
            ("http://[::1]/x", Some(("[::1]:80", "[::1]", "/x"))),
            (
                "http://10.1.2.3:1/bg/tasks/",
                Some(("10.1.2.3:1", "10.1.2.3:1", "/bg/tasks")),
            ),
            ("http://example.org", None),
            ("http://", None),
            ("http://:80", None),
            ("http://127.0.0.1:0", None),
            ("http://127.0.0.1:65536", None),
            ("http://127.0.0.1:x", None),
            ("http://[::1", None),
            ("http://::1:80", None),
            ("http://user@127.0.0.1", None),
            ("http://127.0.0.1/a b", None),
            ("http://127.0.0.1/?q", None),
            ("ftp://127.0.0.1", None),
            ("https://127.0.0.1", None),
        ];
        for (url, expected) in cases {
            let parsed = Server::parse(url, None).ok();
            let got = parsed.as_ref().map(|s| {
                let host = &s.headers[6..s.headers.find('\r').unwrap()];
                (s.address.to_string(), host, s.base.as_str())
            });
            let expected = expected.map(|(a, h, b)| (a.to_string(), h, b));
            assert_eq!(got, expected, "{url}");
        }
    }

    #[test]
    fn requests_carry_host_token_and_length() {
        let mut server = Server::parse("http://127.0.0.1:1/p/", Some("tok".into())).unwrap();
        let request = server.request("POST", "/tasks", b"{}");
        let expected = "POST /p/tasks HTTP/1.1\r\nHost: 127.0.0.1:1\r\nUser-Agent: bgtasks/VERSION\r\n\
            Authorization: Bearer tok\r\nContent-Type: application/json\r\n\
            Content-Length: 2\r\nConnection: close\r\n\r\n{}";
        let expected = expected.replace("VERSION", env!("CARGO_PKG_VERSION"));
        assert_eq!(String::from_utf8(request).unwrap(), expected);
        server = Server::parse("http://127.0.0.1:1/p/", None).unwrap();
        let request = String::from_utf8(server.request("POST", "/tasks/a/cancel", b"")).unwrap();
        assert!(request.ends_with("\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
        assert!(!request.contains("Authorization"), "{request}");
        let request = String::from_utf8(server.request("GET", "/queues", b"")).unwrap();
        assert!(!request.contains("Content-Length"), "{request}");
    }

    #[test]
    fn status_lines_are_read_strictly() {
        let cases: &[(&[u8], Option<u16>)] = &[
            (b"HTTP/1.1 200 OK", Some(200)),
            (b"HTTP/1.0 503 Service Unavailable", Some(503)),
            (b"HTTP/1.1 404", Some(404)),
            (b"HTTP/1.1 204 ", Some(204)),
            (b"HTTP/1.1 99 Low", None),
            (b"HTTP/1.1 600 High", None),
            (b"HTTP/1.1 2000 OK", None),
            (b"HTTP/1.1 20x OK", None),
            (b"HTTP/2 200 OK", None),
            (b"HTTP/1.1  200 OK", None),
            (b"SSH-2.0-OpenSSH_9.6", None),
            (b"", None),
        ];
        for (line, status) in cases {
            assert_eq!(
                parse_status_line(line),
                *status,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn response_heads_say_how_the_body_is_delimited() {
        let head = |text: &str| parse_response_head(text.as_bytes());
        let ok = |status, delimiter| Ok(ResponseHead { status, delimiter });
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: x\r\n\r\n"),
            ok(200, Delimiter::Length(12))
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\nTransfer-Encoding: gzip, Chunked\n\n"),
            ok(200, Delimiter::Chunked)
        );
        assert_eq!(head("HTTP/1.0 200 OK\r\n\r\n"), ok(200, Delimiter::Close));
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n"),
            ok(200, Delimiter::Length(3))
        );
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
            "hello\r\n\r\n",
        ] {
            assert!(head(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bodies_decode_however_they_are_split() {
        let cases: &[(Delimiter, &[u8], &[u8])] = &[
            (Delimiter::Length(5), b"hello and more", b"hello"),
            (Delimiter::Length(0), b"", b""),
            (
                Delimiter::Chunked,
                b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nTrailer: x\r\n\r\n",
                b"hello!",
            ),
        ];
        for (delimiter, wire, body) in cases {
            for cut in 0..=wire.len() {
                let mut decoder = Decoder::new(*delimiter);
                let mut out = Vec::new();
                let first = decoder.decode(&wire[..cut], &mut out).unwrap();
                let done = first || decoder.decode(&wire[cut..], &mut out).unwrap();
                assert!(done, "{delimiter:?} cut at {cut}");
                assert_eq!(out, *body, "{delimiter:?} cut at {cut}");
            }
        }
        let mut decoder = Decoder::new(Delimiter::Chunked);
        assert!(decoder.decode(b"zz\r\n", &mut Vec::new()).is_err());
        let mut decoder = Decoder::new(Delimiter::Close);
        assert_eq!(decoder.decode(b"abc", &mut Vec::new()), Ok(false));
    }

    #[test]
    fn event_streams_are_cut_into_events_however_they_arrive() {
        let wire = ": keep-alive\n\nevent: stats\ndata: {\"counts\": {}}\n\n\
                    event: task\ndata: {\"id\": \"a\"}\n\ndata: x\ndata: y\n\n";
        let expected = [
            ("stats", "{\"counts\": {}}"),
            ("task", "{\"id\": \"a\"}"),
            ("message", "x\ny"),
        ];
        for cut in 0..=wire.len() {
            let mut text = EventText::default();
            let mut events = Vec::new();
            for part in [&wire.as_bytes()[..cut], &wire.as_bytes()[cut..]] {
                text.text.extend_from_slice(part);
                while let Some(event) = text.next_event() {
                    events.push(event);
                }
            }
            let events: Vec<(&str, &str)> = events
                .iter()
                .map(|(n, d)| (n.as_str(), d.as_str()))
                .collect();
            assert_eq!(events, expected, "cut at {cut}");
        }
    }
}
