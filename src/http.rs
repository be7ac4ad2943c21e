//! The HTTP/1.1 request codec (RFC 9112): request heads, chunked bodies
//! and their trailers, and the errors that close a connection.
//!
//! The codec is pure: it looks at bytes and says what they are, and never
//! reads or writes a socket (that is [`crate::conn`]'s), so every rule
//! below is tested on byte strings. Partial input is a normal state, not
//! an error: the head parser is only called once [`find_head_end`] has
//! seen the blank line, and [`find_head_end`] looks only at the newly read
//! bytes ([`take_head`] remembers how far it looked), so a client
//! trickling a head in one byte at a time costs linear work. The chunked
//! decoder ([`Chunked`]) is resumable for the same reason. Every limit has
//! a name and a reason. Answers are written by [`crate::response`].
//!
//! It is strict where leniency would let a request be read two ways — the
//! way requests are smuggled past a proxy — and lenient where the RFC
//! allows it for requests typed by hand.
//!
//! # Accepted
//!
//! - Keep-alive, HTTP/1.0's only with `Connection: keep-alive` (which the
//!   answer repeats), and pipelining; [`crate::conn`] answers in order.
//! - Bodies by `Content-Length` or `Transfer-Encoding: chunked`; neither
//!   header means an empty body. Chunk extensions are ignored; trailer
//!   fields are checked like header fields, then ignored.
//! - `Expect: 100-continue` (ignored from an HTTP/1.0 client, which cannot
//!   mean it).
//! - A bare LF for CRLF; empty lines before the request line (RFC 9112
//!   §2.2); header names in any case; runs of SP, HTAB, VT and FF between
//!   the request line's parts, and before or after them (RFC 9112 §3).
//! - Targets in absolute form (`http://host/tasks`, the host ignored) and
//!   `*`, which names no route. Path segments are percent-decoded one by
//!   one by the router, so `%2F` does not split one.
//!
//! # Refused
//!
//! An error names the status it becomes ([`HttpError::status`]). After any
//! of them the answer says `Connection: close` and the connection ends:
//! once framing is in doubt, nobody knows where the next request would
//! start.
//!
//! | what | answer |
//! |---|---|
//! | a malformed request line, header or trailer line; obs-fold; whitespace before a colon; a control character in a value; a bare CR; a broken `%` escape in the path | `400` |
//! | HTTP/1.1 without `Host`, or any request with two | `400` |
//! | `Content-Length` with `Transfer-Encoding`, twice, as a list, signed or past 2^64; `Transfer-Encoding` on HTTP/1.0; `chunked` twice | `400` |
//! | a malformed or overflowing chunk size, chunk data longer than its size, a chunk-size line over [`MAX_CHUNK_LINE`] | `400` |
//! | no whole head [`HEAD_TIMEOUT`] after its first byte (after the accept, for a connection's first request); no whole body [`BODY_TIMEOUT`] after its head | `408` |
//! | a body over `--max-body` (by `Content-Length`, or as soon as the chunks pass it) | `413` |
//! | an `Expect` other than `100-continue` | `417` |
//! | a head (or trailers) over [`MAX_HEAD`] or [`MAX_HEADERS`] lines | `431` |
//! | a transfer coding other than `chunked` | `501` |
//! | a version other than HTTP/1.0 and 1.1 | `505` |
//!
//! The timeouts are the connection's to enforce, with one deadline for a
//! whole head and one for a whole body, so trickling bytes cannot stretch
//! either; so are [`IDLE_TIMEOUT`] and [`WRITE_TIMEOUT`] (see
//! [`crate::conn`]). No input gets a `500`.

use std::ops::Range;
use std::time::Duration;

/// The most bytes of a request head (request line and headers): the
/// contract's limit (SPEC §3), far above any request this API needs (a
/// token and an idempotency key are a few hundred bytes), and what a
/// connection reading a head may make the server hold, with one read.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// The most header lines in one request head (or chunked trailer): the
/// contract's limit (SPEC §3); real clients send about ten.
const MAX_HEADERS: usize = 100;

/// The most bytes of a chunk-size line with its extensions: a size is at
/// most 16 hex digits, and the extensions are ignored, so a long line could
/// only make the server read on for nothing.
const MAX_CHUNK_LINE: usize = 4096;

/// How long a whole request head may take to arrive, from its first byte
/// (from the accept, for a connection's first request): the contract's
/// 10 s (SPEC §3), ample for a few hundred bytes on any link, short enough
/// that a client that connects and says nothing soon gives its place
/// back. One deadline for the whole head, so trickling bytes cannot
/// stretch it.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request body may take to arrive, from the end of its head:
/// as long as a head may take, and one deadline for all of it, for the
/// same reasons.
pub(crate) const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle keep-alive connection stays open: the contract's 60 s
/// (SPEC §3), long enough for a client that polls every few seconds to
/// reuse it; at `--max-connections` an idle one gives its place to a new
/// client sooner ([`crate::idle`]).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the answers a connection has to write may wait once the
/// socket first refuses their bytes (its buffers are full) before the
/// client is deemed gone: a client that never reads must not hold a
/// connection open.
///
/// One deadline for all the answers waiting when it starts, and never a
/// second for any of them: what the client reads meanwhile does not move
/// it, and once it has passed nothing more is written, however much room
/// the socket has made since — a client that reads a little now and then
/// cannot stretch it. Answers made after those are all written get a
/// deadline of their own, if the socket refuses them in turn.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The request methods routes tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// `HEAD`: answered without a body.
    Head,
    /// Any other well-formed method: always `404` or `405`.
    Other,
}

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `Content-Length` bytes (0 when the request has neither header).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What a request head says, with byte ranges into the head for the parts
/// routes read later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    /// The method.
    pub(crate) method: Method,
    /// The path of the request target (absolute form already stripped).
    pub(crate) path: Range<usize>,
    /// The query string, without its `?`.
    pub(crate) query: Option<Range<usize>>,
    /// Whether the request is HTTP/1.0.
    pub(crate) http10: bool,
    /// Whether the connection stays open after the answer.
    pub(crate) keep_alive: bool,
    /// How the body is delimited.
    pub(crate) framing: Framing,
    /// Whether the client waits for `100 Continue` before sending the body.
    pub(crate) expect_continue: bool,
    /// The `Authorization` value.
    pub(crate) authorization: Option<Range<usize>>,
    /// The `Idempotency-Key` value.
    pub(crate) idempotency_key: Option<Range<usize>>,
}

/// Why a request cannot be served; each becomes one status code, and the
/// connection closes after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HttpError {
    /// `400`: malformed, with the reason.
    BadRequest(&'static str),
    /// `408`: the head or body did not arrive in time.
    Timeout,
    /// `413`: the body is larger than `--max-body`.
    BodyTooLarge,
    /// `417`: an `Expect` other than `100-continue`.
    ExpectationFailed,
    /// `431`: the head is larger than [`MAX_HEAD`] or has too many headers.
    HeadTooLarge,
    /// `501`: a transfer coding other than `chunked`.
    NotImplemented,
    /// `505`: an HTTP version other than 1.0 and 1.1.
    VersionNotSupported,
}

impl HttpError {
    /// Returns the status code.
    pub(crate) fn status(self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::Timeout => 408,
            HttpError::BodyTooLarge => 413,
            HttpError::ExpectationFailed => 417,
            HttpError::HeadTooLarge => 431,
            HttpError::NotImplemented => 501,
            HttpError::VersionNotSupported => 505,
        }
    }

    /// Returns the sentence sent in the error body.
    pub(crate) fn message(self) -> &'static str {
        match self {
            HttpError::BadRequest(why) => why,
            HttpError::Timeout => "the request did not arrive in time",
            HttpError::BodyTooLarge => "the request body is larger than the server accepts",
            HttpError::ExpectationFailed => "only the expectation 100-continue is supported",
            HttpError::HeadTooLarge => "the request head is larger than the server accepts",
            HttpError::NotImplemented => "only the chunked transfer coding is supported",
            HttpError::VersionNotSupported => "only HTTP/1.0 and HTTP/1.1 are supported",
        }
    }
}

/// Counts the empty lines (CRLF or bare LF) at the start of `buf`, which
/// RFC 9112 §2.2 asks a server to ignore before a request line.
fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut i = 0;
    loop {
        match &buf[i..] {
            [b'\n', ..] => i += 1,
            [b'\r', b'\n', ..] => i += 2,
            _ => return i,
        }
    }
}

/// Finds the end of a request head — the blank line, CRLF or bare LF —
/// and returns the length of the head including it. Only bytes from
/// `from` on are new, so the scan starts just before them.
pub(crate) fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(2);
    let mut i = start + buf[start..].iter().position(|&b| b == b'\n')?;
    loop {
        match &buf[i + 1..] {
            [b'\n', ..] => return Some(i + 2),
            [b'\r', b'\n', ..] => return Some(i + 3),
            _ => i += 1 + buf[i + 1..].iter().position(|&b| b == b'\n')?,
        }
    }
}

/// Looks for a whole request head at the start of `buf`, dropping the
/// empty lines before it; returns the head's length once it is all there.
/// `scanned` remembers how far earlier calls looked, so each byte is
/// scanned about once however the head arrives.
pub(crate) fn take_head(
    buf: &mut Vec<u8>,
    scanned: &mut usize,
) -> Result<Option<usize>, HttpError> {
    let empty_lines = leading_empty_lines(buf);
    if empty_lines > 0 {
        buf.drain(..empty_lines);
        *scanned = 0;
    }
    match find_head_end(buf, *scanned) {
        Some(end) if end > MAX_HEAD => Err(HttpError::HeadTooLarge),
        Some(end) => Ok(Some(end)),
        None if buf.len() >= MAX_HEAD => Err(HttpError::HeadTooLarge),
        None => {
            *scanned = buf.len();
            Ok(None)
        }
    }
}

/// Tells whether `b` may appear in a token (RFC 9110 §5.6.2): methods and
/// header names.
fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// Which bytes are token characters, looked up once per byte of every
/// method and header name.
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    table
};

/// Tells whether `b` separates the parts of a request line. RFC 9112 §3
/// lets a server split on any run of these instead of exactly one SP.
fn is_line_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0x0b | 0x0c)
}

/// Trims spaces and tabs (optional whitespace) from both ends.
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Returns the range of `part` inside `whole`; `part` must be a subslice.
fn range_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// Splits a head (as found by [`find_head_end`]) into lines without their
/// line ends. A CR anywhere but just before a LF is an error.
fn head_lines(head: &[u8]) -> impl Iterator<Item = Result<&[u8], HttpError>> {
    head.split(|&b| b == b'\n').map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.contains(&b'\r') {
            Err(HttpError::BadRequest(
                "a bare CR is not allowed in a request head",
            ))
        } else {
            Ok(line)
        }
    })
}

/// Parses a complete request head: request line, then header lines, then
/// the blank line. The head must start at its request line.
pub(crate) fn parse_head(head: &[u8]) -> Result<Head, HttpError> {
    let mut lines = head_lines(head);
    let request_line = lines.next().unwrap_or(Ok(b""))?;
    let mut words = request_line
        .split(|&b| is_line_space(b))
        .filter(|w| !w.is_empty());
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(HttpError::BadRequest("the request line is malformed"));
    };
    if !method.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::BadRequest("the request method is malformed"));
    }
    let http10 = parse_version(version)?;
    let (path, query) = split_target(target)?;
    let mut parsed = Head {
        method: match method {
            b"GET" => Method::Get,
            b"POST" => Method::Post,
            b"HEAD" => Method::Head,
            _ => Method::Other,
        },
        path: range_in(head, path),
        query: query.map(|q| range_in(head, q)),
        http10,
        keep_alive: !http10,
        framing: Framing::Length(0),
        expect_continue: false,
        authorization: None,
        idempotency_key: None,
    };
    let mut fields = HeaderFields::default();
    for (count, line) in lines.enumerate() {
        let line = line?;
        if line.is_empty() {
            break;
        }
        if count >= MAX_HEADERS {
            return Err(HttpError::HeadTooLarge);
        }
        fields.add(head, line, &mut parsed)?;
    }
    fields.finish(&mut parsed)?;
    Ok(parsed)
}

/// Parses `HTTP/1.1` or `HTTP/1.0`; returns whether it is 1.0.
fn parse_version(version: &[u8]) -> Result<bool, HttpError> {
    match version {
        b"HTTP/1.1" => Ok(false),
        b"HTTP/1.0" => Ok(true),
        [b'H', b'T', b'T', b'P', b'/', rest @ ..]
            if !rest.is_empty() && rest.iter().all(|&b| b.is_ascii_digit() || b == b'.') =>
        {
            Err(HttpError::VersionNotSupported)
        }
        _ => Err(HttpError::BadRequest("the HTTP version is malformed")),
    }
}

/// Splits a request target into path and query. Accepts the origin form
/// (`/tasks?x`), the absolute form (`http://host/tasks?x`, whose authority
/// is ignored) and `*`, which matches no route.
fn split_target(target: &[u8]) -> Result<(&[u8], Option<&[u8]>), HttpError> {
    if !target.iter().all(|&b| b.is_ascii_graphic() && b != b'#') {
        return Err(HttpError::BadRequest("the request target is malformed"));
    }
    let path_and_query = match target {
        [b'/', ..] | b"*" => target,
        _ => {
            let scheme_end = target
                .windows(3)
                .position(|w| w == b"://")
                .filter(|&i| {
                    let scheme = &target[..i];
                    scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")
                })
                .ok_or(HttpError::BadRequest("the request target is malformed"))?;
            let rest = &target[scheme_end + 3..];
            let authority = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(rest.len());
            if authority == 0 {
                return Err(HttpError::BadRequest("the request target has no host"));
            }
            &rest[authority..]
        }
    };
    Ok(match path_and_query.iter().position(|&b| b == b'?') {
        Some(q) => (&path_and_query[..q], Some(&path_and_query[q + 1..])),
        None => (path_and_query, None),
    })
}

/// What the header lines have said so far; checked as a whole at the end.
#[derive(Default)]
struct HeaderFields {
    /// How many `Host` lines.
    hosts: usize,
    /// The `Content-Length`, if any.
    content_length: Option<u64>,
    /// Whether any `Transfer-Encoding` line appeared.
    transfer_encoding: bool,
    /// How many `chunked` codings were listed.
    pub(crate) chunked: usize,
    /// Whether a coding other than `chunked` was listed.
    other_coding: bool,
    /// `Connection: close` was sent.
    pub(crate) close: bool,
    /// `Connection: keep-alive` was sent.
    pub(crate) keep_alive: bool,
}

impl HeaderFields {
    /// Takes one header line into account.
    pub(crate) fn add(
        &mut self,
        head: &[u8],
        line: &[u8],
        parsed: &mut Head,
    ) -> Result<(), HttpError> {
        let (name, value) = split_field(line)?;
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        if is("host") {
            self.hosts += 1;
        } else if is("content-length") {
            if self.content_length.is_some() {
                return Err(HttpError::BadRequest("Content-Length is repeated"));
            }
            self.content_length = Some(parse_content_length(value)?);
        } else if is("transfer-encoding") {
            self.transfer_encoding = true;
            for coding in value.split(|&b| b == b',').map(trim_ows) {
                if coding.eq_ignore_ascii_case(b"chunked") {
                    self.chunked += 1;
                } else if !coding.is_empty() {
                    self.other_coding = true;
                }
            }
        } else if is("connection") {
            for option in value.split(|&b| b == b',').map(trim_ows) {
                self.close |= option.eq_ignore_ascii_case(b"close");
                self.keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if is("expect") {
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return Err(HttpError::ExpectationFailed);
            }
            parsed.expect_continue = true;
        } else if is("authorization") {
            if parsed.authorization.is_some() {
                return Err(HttpError::BadRequest("Authorization is repeated"));
            }
            parsed.authorization = Some(range_in(head, value));
        } else if is("idempotency-key") {
            if parsed.idempotency_key.is_some() {
                return Err(HttpError::BadRequest("Idempotency-Key is repeated"));
            }
            parsed.idempotency_key = Some(range_in(head, value));
        }
        Ok(())
    }

    /// Checks the headers as a whole and decides framing and keep-alive.
    pub(crate) fn finish(self, parsed: &mut Head) -> Result<(), HttpError> {
        if self.hosts > 1 || (self.hosts == 0 && !parsed.http10) {
            return Err(HttpError::BadRequest(
                "an HTTP/1.1 request needs exactly one Host header",
            ));
        }
        if self.transfer_encoding {
            // Both framings at once is how requests are smuggled past proxies.
            if self.content_length.is_some() {
                return Err(HttpError::BadRequest(
                    "Content-Length and Transfer-Encoding together are not allowed",
                ));
            }
            if parsed.http10 {
                return Err(HttpError::BadRequest("HTTP/1.0 has no Transfer-Encoding"));
            }
            if self.other_coding {
                return Err(HttpError::NotImplemented);
            }
            if self.chunked != 1 {
                return Err(HttpError::BadRequest("Transfer-Encoding is malformed"));
            }
            parsed.framing = Framing::Chunked;
        } else if let Some(length) = self.content_length {
            parsed.framing = Framing::Length(length);
        }
        parsed.keep_alive = if parsed.http10 {
            self.keep_alive && !self.close
        } else {
            !self.close
        };
        // RFC 9110 §10.1.1: an HTTP/1.0 client cannot mean 100-continue.
        parsed.expect_continue &= !parsed.http10;
        Ok(())
    }
}

/// Splits a header or trailer field line into its name and its value
/// (without surrounding whitespace), refusing what RFC 9112 §5 lets a
/// server refuse: obsolete line folding, whitespace before the colon, no
/// colon, an empty or malformed name, control characters in the value.
fn split_field(line: &[u8]) -> Result<(&[u8], &[u8]), HttpError> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        // RFC 9112 §5.2: obsolete line folding may be rejected.
        return Err(HttpError::BadRequest(
            "obsolete line folding (a header line starting with whitespace) is not accepted",
        ));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(HttpError::BadRequest("a header line has no colon"))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        // This includes whitespace before the colon (RFC 9112 §5.1).
        return Err(HttpError::BadRequest("a header name is malformed"));
    }
    let value = trim_ows(&line[colon + 1..]);
    if value.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err(HttpError::BadRequest(
            "a header value has a control character",
        ));
    }
    Ok((name, value))
}

/// Parses a `Content-Length` value: digits only, no sign, no list, and no
/// value past `u64::MAX`.
pub(crate) fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let bad = HttpError::BadRequest("Content-Length is malformed");
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    value.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(bad)
    })
}

/// Where a chunked body decoder is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum ChunkState {
    /// Reading the hex digits of a chunk size.
    #[default]
    Size,
    /// Reading whitespace after the size, before `;` or the line end.
    SizeSpace,
    /// Reading chunk extensions up to the line end (they are ignored).
    Extension,
    /// Reading this many bytes of chunk data.
    Data(u64),
    /// Expecting the CRLF (or LF) after chunk data.
    DataEnd,
    /// Reading trailer lines (the current one is in `Chunked::trailer`).
    Trailer,
    /// The body is complete.
    Done,
}

/// A resumable decoder of a chunked body (RFC 9112 §7.1): fed whatever
/// bytes have arrived, it keeps its place, so a body split anywhere decodes
/// the same, and each byte is looked at once.
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    /// Where the decoder is.
    pub(crate) state: ChunkState,
    /// The chunk size read so far.
    pub(crate) size: u64,
    /// Whether the size line has any hex digit.
    pub(crate) digits: bool,
    /// Bytes of the current size line, for its limit.
    pub(crate) line: usize,
    /// Whether a CR was just seen (a CR must be followed by LF).
    cr: bool,
    /// The trailer line being read, checked like a header line at its end.
    trailer: Vec<u8>,
    /// Trailer bytes so far, for the head's size limit.
    trailer_bytes: usize,
    /// Trailer lines so far, for the head's line limit.
    trailer_lines: usize,
    /// The decoded body.
    pub(crate) body: Vec<u8>,
}

impl Chunked {
    /// Decodes what it can of `input` and returns how many bytes it used.
    /// When the body is complete, `state` is `Done` and the rest of
    /// `input` belongs to the next request.
    pub(crate) fn feed(&mut self, input: &[u8], max_body: usize) -> Result<usize, HttpError> {
        let bad = |why| Err(HttpError::BadRequest(why));
        let mut i = 0;
        while i < input.len() && self.state != ChunkState::Done {
            let b = input[i];
            if self.cr && b != b'\n' {
                return bad("a bare CR in the chunked framing");
            }
            match self.state {
                ChunkState::Data(left) => {
                    let take = left.min((input.len() - i) as u64) as usize;
                    self.body.extend_from_slice(&input[i..i + take]);
                    i += take;
                    self.state = match left - take as u64 {
                        0 => ChunkState::DataEnd,
                        left => ChunkState::Data(left),
                    };
                    continue;
                }
                _ if b == b'\r' => self.cr = true,
                ChunkState::Size if b.is_ascii_hexdigit() => {
                    self.size = self
                        .size
                        .checked_mul(16)
                        .and_then(|s| {
                            s.checked_add(u64::from((b as char).to_digit(16).unwrap_or(0)))
                        })
                        .ok_or(HttpError::BadRequest("a chunk size overflows"))?;
                    self.digits = true;
                }
                ChunkState::Size | ChunkState::SizeSpace | ChunkState::Extension if b == b'\n' => {
                    if !self.digits {
                        return bad("a chunk size is missing");
                    }
                    self.end_size_line(max_body)?;
                }
                ChunkState::Size | ChunkState::SizeSpace if b == b';' => {
                    self.state = ChunkState::Extension
                }
                ChunkState::Size | ChunkState::SizeSpace if b == b' ' || b == b'\t' => {
                    self.state = ChunkState::SizeSpace
                }
                ChunkState::Size | ChunkState::SizeSpace => {
                    return bad("a chunk size is malformed");
                }
                ChunkState::Extension if b < 0x20 && b != b'\t' || b == 0x7f => {
                    return bad("a chunk extension has a control character");
                }
                ChunkState::Extension => {}
                ChunkState::DataEnd if b == b'\n' => self.state = ChunkState::Size,
                ChunkState::DataEnd => return bad("chunk data is longer than its size"),
                ChunkState::Trailer if b == b'\n' && self.trailer.is_empty() => {
                    self.state = ChunkState::Done;
                }
                ChunkState::Trailer if b == b'\n' => {
                    self.trailer_lines += 1;
                    if self.trailer_lines > MAX_HEADERS {
                        return Err(HttpError::HeadTooLarge);
                    }
                    // Trailers are read and ignored, but only if they are
                    // what a header line may be: a request head after the
                    // last chunk must not pass as a trailer.
                    split_field(&self.trailer)?;
                    self.trailer.clear();
                }
                ChunkState::Trailer => self.trailer.push(b),
                ChunkState::Done => {}
            }
            if b != b'\r' {
                self.cr = false;
            }
            if matches!(
                self.state,
                ChunkState::Size | ChunkState::SizeSpace | ChunkState::Extension
            ) {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return bad("a chunk size line is too long");
                }
            }
            if self.state == ChunkState::Trailer {
                self.trailer_bytes += 1;
                if self.trailer_bytes > MAX_HEAD {
                    return Err(HttpError::HeadTooLarge);
                }
            }
            i += 1;
        }
        Ok(i)
    }

    /// Acts on a complete size line: the last chunk leads to the trailers,
    /// any other to its data, if the body stays within `max_body`.
    fn end_size_line(&mut self, max_body: usize) -> Result<(), HttpError> {
        if self.size > (max_body - self.body.len()) as u64 {
            return Err(HttpError::BodyTooLarge);
        }
        self.state = match self.size {
            0 => ChunkState::Trailer,
            size => ChunkState::Data(size),
        };
        self.size = 0;
        self.digits = false;
        self.line = 0;
        Ok(())
    }
}

/// Decodes the `%XX` escapes of a path segment or query part; with `plus`
/// a `+` is a space (form encoding). `None` for a broken escape.
pub(crate) fn percent_decode(s: &[u8], plus: bool) -> Option<std::borrow::Cow<'_, [u8]>> {
    if !s.iter().any(|&b| b == b'%' || plus && b == b'+') {
        return Some(std::borrow::Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                // Exactly two hex digits: `from_str_radix` alone would also
                // take a sign, as in `%+1`.
                let hex = s
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                out.push(digit(hex[0]) << 4 | digit(hex[1]));
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(std::borrow::Cow::Owned(out))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        let cases: &[(&str, bool, Option<&str>)] = &[
            ("abc", false, Some("abc")),
            ("a%20b", false, Some("a b")),
            ("a+b", false, Some("a+b")),
            ("a+b", true, Some("a b")),
            ("%41%42", true, Some("AB")),
            ("%2F", false, Some("/")),
            ("%", false, None),
            ("%4", false, None),
            ("%zz", false, None),
            ("%+1", true, None),
        ];
        for &(input, plus, expected) in cases {
            let got = percent_decode(input.as_bytes(), plus)
                .map(|c| String::from_utf8(c.into_owned()).unwrap());
            assert_eq!(got.as_deref(), expected, "{input:?}");
        }
    }

    /// What a parsed request says, owned, so results can be compared.
    #[derive(Debug, PartialEq)]
    struct Parsed {
        method: Method,
        path: Vec<u8>,
        query: Option<Vec<u8>>,
        http10: bool,
        keep_alive: bool,
        expect_continue: bool,
        authorization: Option<Vec<u8>>,
        body: Vec<u8>,
    }

    /// How a stream of bytes parses.
    #[derive(Debug, PartialEq)]
    struct Verdict {
        /// Each request read, or the error that ended the stream.
        requests: Vec<Result<Parsed, HttpError>>,
        /// Bytes left over when the input ended inside a request.
        incomplete: bool,
    }

    /// Feeds `input` to the codec in pieces, as a connection reads it:
    /// `take_head`, `parse_head`, then a body by length or by the chunked
    /// decoder. `pieces` gives the size of each read (repeating the last).
    fn parse_stream(input: &[u8], pieces: &[usize], max_body: usize) -> Verdict {
        let mut buf = Vec::new();
        let (mut at, mut reads) = (0, 0);
        // Appends the next piece of input; `false` once it is all read.
        let mut read = |buf: &mut Vec<u8>, at: &mut usize| {
            if *at == input.len() {
                return false;
            }
            let n = pieces[reads.min(pieces.len() - 1)]
                .max(1)
                .min(input.len() - *at);
            reads += 1;
            buf.extend_from_slice(&input[*at..*at + n]);
            *at += n;
            true
        };
        let mut requests = Vec::new();
        let end = |requests, incomplete| Verdict {
            requests,
            incomplete,
        };
        loop {
            let mut scanned = 0;
            let head_len = loop {
                match take_head(&mut buf, &mut scanned) {
                    Err(e) => return end(push(requests, Err(e)), false),
                    Ok(Some(n)) => break n,
                    Ok(None) if read(&mut buf, &mut at) => {}
                    Ok(None) => return end(requests, !buf.is_empty()),
                }
            };
            let head = match parse_head(&buf[..head_len]) {
                Ok(head) => head,
                Err(e) => return end(push(requests, Err(e)), false),
            };
            let (body, consumed) = match head.framing {
                Framing::Length(n) if n > max_body as u64 => {
                    return end(push(requests, Err(HttpError::BodyTooLarge)), false);
                }
                Framing::Length(n) => {
                    let n = n as usize;
                    while buf.len() < head_len + n {
                        if !read(&mut buf, &mut at) {
                            return end(requests, true);
                        }
                    }
                    (buf[head_len..head_len + n].to_vec(), head_len + n)
                }
                Framing::Chunked => {
                    let mut decoder = Chunked::default();
                    loop {
                        match decoder.feed(&buf[head_len..], max_body) {
                            Err(e) => return end(push(requests, Err(e)), false),
                            Ok(used) => drop(buf.drain(head_len..head_len + used)),
                        }
                        if decoder.state == ChunkState::Done {
                            break (decoder.body, head_len);
                        }
                        if !read(&mut buf, &mut at) {
                            return end(requests, true);
                        }
                    }
                }
            };
            let bytes = &buf[..head_len];
            requests.push(Ok(Parsed {
                method: head.method,
                path: bytes[head.path.clone()].to_vec(),
                query: head.query.clone().map(|q| bytes[q].to_vec()),
                http10: head.http10,
                keep_alive: head.keep_alive,
                expect_continue: head.expect_continue,
                authorization: head.authorization.clone().map(|a| bytes[a].to_vec()),
                body,
            }));
            buf.drain(..consumed);
            if buf.is_empty() && at == input.len() {
                return end(requests, false);
            }
        }
    }

    /// Appends to a vector and returns it.
    fn push<T>(mut v: Vec<T>, item: T) -> Vec<T> {
        v.push(item);
        v
    }

    /// Well-formed request streams, several requests each.
    const GOOD_STREAMS: &[&str] = &[
        "GET /tasks?state=queued&limit=5 HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /healthz HTTP/1.1\r\nhost: y\r\n\r\n",
        "POST /tasks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
         5;ext=1;q=\"a;b\"\r\nhello\r\n6 ; e\r\n world\r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\nZ: 1\r\n\r\n\
         GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /healthz HTTP/1.1\nHost: x\n\nPOST /queue-task HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}",
        "\r\n\r\nGET / HTTP/1.0\r\n\r\n\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "POST /tasks HTTP/1.1\nHost: x\ntransfer-encoding: Chunked\n\n3\nabc\n0\n\n",
        "GET http://example.com:8000/tasks/abc?wait=1s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n",
        "GET   /tasks \t HTTP/1.1\r\nHost:x\r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n",
    ];

    #[test]
    fn good_streams_parse_as_expected() {
        let v = parse_stream(GOOD_STREAMS[2].as_bytes(), &[usize::MAX], 1 << 20);
        assert!(!v.incomplete);
        let bodies: Vec<_> = v
            .requests
            .iter()
            .map(|r| r.as_ref().unwrap().body.clone())
            .collect();
        assert_eq!(bodies, [b"hello world0123456789".to_vec(), Vec::new()]);
        assert!(!v.requests[1].as_ref().unwrap().keep_alive);

        let v = parse_stream(GOOD_STREAMS[4].as_bytes(), &[usize::MAX], 1 << 20);
        let flags: Vec<_> = v
            .requests
            .iter()
            .map(|r| r.as_ref().map(|p| (p.http10, p.keep_alive)).unwrap())
            .collect();
        assert_eq!(flags, [(true, false), (true, true)]);

        let v = parse_stream(GOOD_STREAMS[6].as_bytes(), &[usize::MAX], 1 << 20);
        let p = v.requests[0].as_ref().unwrap();
        assert_eq!(
            (p.path.as_slice(), p.query.as_deref()),
            (&b"/tasks/abc"[..], Some(&b"wait=1s"[..]))
        );
        assert_eq!(p.authorization.as_deref(), Some(&b"Bearer t"[..]));

        for stream in GOOD_STREAMS {
            let v = parse_stream(stream.as_bytes(), &[usize::MAX], 1 << 20);
            assert!(
                !v.incomplete && v.requests.iter().all(Result::is_ok),
                "{stream:?}: {v:?}"
            );
        }
    }

    #[test]
    fn a_stream_split_anywhere_parses_the_same() {
        for stream in GOOD_STREAMS {
            let bytes = stream.as_bytes();
            let whole = parse_stream(bytes, &[usize::MAX], 1 << 20);
            for split in 1..bytes.len() {
                let pieces = parse_stream(bytes, &[split, usize::MAX], 1 << 20);
                assert_eq!(pieces, whole, "{stream:?} split at {split}");
            }
            assert_eq!(
                parse_stream(bytes, &[1], 1 << 20),
                whole,
                "{stream:?} byte by byte"
            );
            // Cut short anywhere, a stream is never an error: it is
            // incomplete, or it ends exactly after one of its requests, and
            // then the rest of it parses as the requests that follow.
            for cut in 1..bytes.len() {
                let v = parse_stream(&bytes[..cut], &[7], 1 << 20);
                let n = v.requests.len();
                assert_eq!(v.requests, whole.requests[..n], "{stream:?} cut at {cut}");
                if !v.incomplete {
                    let rest = parse_stream(&bytes[cut..], &[7], 1 << 20);
                    assert_eq!(
                        rest.requests,
                        whole.requests[n..],
                        "{stream:?} cut at {cut}"
                    );
                }
            }
        }
    }

    /// Heads that must be refused, and how.
    const BAD_HEADS: &[(&str, u16)] = &[
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505),
        ("GET / HTTP/3\r\nHost: a\r\n\r\n", 505),
        ("GET / http/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400),
        ("GET /\r\nHost: a\r\n\r\n", 400),
        ("GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400),
        ("G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET /#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET ftp://x/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET http:///tasks HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET example.com:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nNo colon\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", 400),
        ("GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n",
            400,
        ),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551616\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
            501,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n",
            400,
        ),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n", 417),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n",
            400,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nIdempotency-Key: a\r\nIdempotency-Key: b\r\n\r\n",
            400,
        ),
    ];

    #[test]
    fn bad_heads_are_refused_with_the_right_status() {
        for &(head, status) in BAD_HEADS {
            let v = parse_stream(head.as_bytes(), &[usize::MAX], 1 << 20);
            let error = v.requests.last().and_then(|r| r.as_ref().err());
            assert_eq!(error.map(|e| e.status()), Some(status), "{head:?}: {v:?}");
        }
    }

    #[test]
    fn limits_on_the_head_and_headers() {
        let many = "X: y\r\n".repeat(MAX_HEADERS);
        let ok = format!("GET / HTTP/1.1\r\n{many}\r\n").replacen("X: y", "Host: a", 1);
        assert!(parse_head(ok.as_bytes()).is_ok());
        let too_many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(
            parse_head(too_many.as_bytes()),
            Err(HttpError::HeadTooLarge)
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        let v = parse_stream(big.as_bytes(), &[1000], 1 << 20);
        assert_eq!(v.requests, [Err(HttpError::HeadTooLarge)]);
        // A head that never ends stops at the limit, not at the end of input.
        let endless = "GET / HTTP/1.1\r\n".to_string() + &"X: y\r\n".repeat(5000);
        let v = parse_stream(endless.as_bytes(), &[100], 1 << 20);
        assert_eq!(v.requests, [Err(HttpError::HeadTooLarge)]);
    }

    #[test]
    fn header_semantics() {
        let parse = |head: &str| parse_head(head.as_bytes()).unwrap();
        let h = parse("GET / HTTP/1.1\r\nHOST: a\r\nconnection: Keep-Alive, CLOSE\r\n\r\n");
        assert!(!h.keep_alive);
        let h = parse(
            "POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 0042\r\nEXPECT: 100-Continue\r\n\r\n",
        );
        assert_eq!((h.framing, h.expect_continue), (Framing::Length(42), true));
        let h = parse("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.expect_continue, "HTTP/1.0 cannot expect 100-continue");
        let h = parse("GET * HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.path, 4..5);
        let h = parse("GET HTTP://Example.COM HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(h.path.is_empty() && h.query.is_none());
    }

    /// Chunked bodies and how they decode (as `Ok(body)`) or fail.
    const CHUNKED: &[(&str, Result<&str, u16>)] = &[
        ("0\r\n\r\n", Ok("")),
        ("3\r\nabc\r\n0\r\n\r\n", Ok("abc")),
        ("3\nabc\n0\n\n", Ok("abc")),
        ("3;a=b\r\nabc\r\n0;last\r\nT: 1\r\n\r\n", Ok("abc")),
        ("3 ;a\r\nabc\r\n0\r\n\r\n", Ok("abc")),
        ("00003\r\nabc\r\n0\r\n\r\n", Ok("abc")),
        ("a\r\n0123456789\r\n0\r\n\r\n", Ok("0123456789")),
        ("\r\nabc\r\n0\r\n\r\n", Err(400)),
        ("zz\r\n", Err(400)),
        (" 3\r\nabc\r\n0\r\n\r\n", Err(400)),
        ("3 4\r\nabc\r\n0\r\n\r\n", Err(400)),
        ("-3\r\nabc\r\n0\r\n\r\n", Err(400)),
        ("3\r\nabcd\r\n0\r\n\r\n", Err(400)),
        ("3\rabc\r\n0\r\n\r\n", Err(400)),
        ("3\r\nabc\r\r\n0\r\n\r\n", Err(400)),
        ("10000000000000000\r\n", Err(400)),
        ("ffffffffffffffff\r\n", Err(413)),
        ("41\r\n", Err(413)),
        ("3;\x01\r\nabc\r\n0\r\n\r\n", Err(400)),
        ("0\r\nT: \x01\r\n\r\n", Err(400)),
        // Trailer lines follow the header-line rules exactly.
        ("0\r\nno-colon\r\n\r\n", Err(400)),
        ("0\r\nBad Name: x\r\n\r\n", Err(400)),
        ("0\r\nName : y\r\n\r\n", Err(400)),
        ("0\r\n: empty-name\r\n\r\n", Err(400)),
        ("0\r\n folded: x\r\n\r\n", Err(400)),
        ("0\r\nPOST /tasks HTTP/1.1\r\n\r\n", Err(400)),
        ("0\r\nA: 1\r\n\tcontinued\r\n\r\n", Err(400)),
        ("0\r\nX-Ok: a, b\r\nY:\r\n\r\n", Ok("")),
    ];

    #[test]
    fn chunked_bodies_decode_or_fail_as_rfc_9112_says() {
        for &(body, expected) in CHUNKED {
            let stream =
                format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
            for pieces in [&[usize::MAX][..], &[1], &[3]] {
                let v = parse_stream(stream.as_bytes(), pieces, 64);
                let got = match &v.requests[..] {
                    [Ok(p)] => Ok(String::from_utf8(p.body.clone()).unwrap()),
                    [Err(e)] => Err(e.status()),
                    other => panic!("{body:?}: {other:?}"),
                };
                assert_eq!(
                    got.as_deref().map_err(|e| *e),
                    expected,
                    "{body:?} in pieces {pieces:?}"
                );
            }
        }
        // Trailers count against the head's limits.
        for (trailers, status) in [
            ("T: 1\r\n".repeat(MAX_HEADERS), None),
            ("T: 1\r\n".repeat(MAX_HEADERS + 1), Some(431)),
            (format!("T: {}\r\n", "x".repeat(MAX_HEAD)), Some(431)),
        ] {
            let body = format!("0\r\n{trailers}\r\n");
            let result = Chunked::default().feed(body.as_bytes(), 64);
            assert_eq!(
                result.err().map(HttpError::status),
                status,
                "{}",
                &body[..20]
            );
        }
        let line = format!("1;{}\r\n", "x".repeat(MAX_CHUNK_LINE));
        let mut decoder = Chunked::default();
        assert!(matches!(
            decoder.feed(line.as_bytes(), 64),
            Err(HttpError::BadRequest(_))
        ));
    }

    /// A small, seeded random number generator (xorshift64*), so the
    /// property tests need no crate and every failure can be replayed.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Bytes that make random input look like HTTP often enough to reach
    /// deep into the parser.
    const FRAGMENTS: &[&str] = &[
        "GET ",
        "POST ",
        "/tasks",
        " HTTP/1.1",
        " HTTP/1.0",
        "\r\n",
        "\n",
        "\r",
        "Host: a",
        ":",
        " ",
        "Content-Length: ",
        "Transfer-Encoding: chunked",
        "Expect: 100-continue",
        "0",
        "5",
        "a",
        "ff",
        ";x",
        "Connection: close",
        "%",
        "?",
        "\t",
        "\x00",
        "\u{ff}",
        "\r\n\r\n",
    ];

    #[test]
    fn random_input_never_panics_and_more_input_never_changes_a_verdict() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let input: Vec<u8> = if round % 2 == 0 {
                (0..rng.below(40))
                    .flat_map(|_| FRAGMENTS[rng.below(FRAGMENTS.len())].bytes())
                    .collect()
            } else {
                let mut bytes = GOOD_STREAMS[rng.below(GOOD_STREAMS.len())]
                    .as_bytes()
                    .to_vec();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(bytes.len());
                    match rng.below(3) {
                        0 => bytes[at] = rng.next() as u8,
                        1 => drop(bytes.remove(at)),
                        _ => bytes.insert(at, rng.next() as u8),
                    }
                }
                bytes
            };
            let whole = parse_stream(&input, &[usize::MAX], 256);
            let split = parse_stream(&input, &[1 + rng.below(16)], 256);
            assert_eq!(
                whole,
                split,
                "round {round}: {:?}",
                String::from_utf8_lossy(&input)
            );
            // What the codec said of the first bytes stands when more
            // arrive: each request read (or the error) is read the same.
            let cut = rng.below(input.len() + 1);
            let early = parse_stream(&input[..cut], &[usize::MAX], 256);
            let n = early.requests.len();
            assert_eq!(
                early.requests,
                whole.requests[..n],
                "round {round}, cut at {cut}: {:?}",
                String::from_utf8_lossy(&input)
            );
        }
    }
}
