//! What a command of the client tells whoever ran it (SPEC §16): the
//! server's answers shown for people, the line on stderr that says why a
//! command ended, and its exit status, which scripts branch on.
//!
//! An answer is shown in the order the server wrote it: [`Members`] keeps
//! an object's members as written (serde_json's own map would sort them),
//! and its values as JSON text, read only where shown. An object prints
//! one member a line, a list as a table with one header line, an event as
//! one line of `name=value`. Every value that reaches a terminal is made
//! safe first ([`plain`], [`one_line`]): a label cannot drive it.
//!
//! It knows neither the command line nor HTTP: [`crate::client`] decides
//! what to print and when to end, and both it and [`crate::client_http`]
//! end a command through [`fail`], which says why once, where the reason
//! is found, and carries only the status up.

use std::fmt::{Arguments, Write as _};
use std::io::{self, Write};

/// Exit statuses of SPEC §16, which scripts branch on.
pub(crate) mod exit {
    /// Done; for `wait` and `submit --wait`, the task succeeded.
    pub const DONE: i32 = 0;
    /// The task ended `failed` or `cancelled`.
    pub const TASK_ENDED: i32 = 1;
    /// Bad usage.
    pub const USAGE: i32 = 2;
    /// The server cannot be reached: refused, timed out, not HTTP.
    pub const UNREACHABLE: i32 = 3;
    /// The server refused the request: any 4xx or 5xx.
    pub const REFUSED: i32 = 4;
    /// `--wait` or `--timeout` ran out before the task ended.
    pub const OUT_OF_TIME: i32 = 5;
}

/// A command's end before it did all it was asked: its exit status, the
/// reason already said on stderr where it was found. Only the status
/// travels up: a message is said once, so none is carried.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Exit(pub(crate) i32);

impl From<io::Error> for Exit {
    /// Stdout could not be written. A reader that has gone (`bgtasks events
    /// | head`) has had what it wanted; anything else is worth a line.
    fn from(e: io::Error) -> Exit {
        if e.kind() == io::ErrorKind::BrokenPipe {
            return Exit(exit::USAGE);
        }
        fail(exit::USAGE, format_args!("cannot write the output: {e}"))
    }
}

/// Says why a command ends, and returns its exit status.
#[cold]
#[inline(never)]
pub(crate) fn fail(status: i32, why: Arguments) -> Exit {
    say(why);
    Exit(status)
}

/// Says that the server answered, but not as bgtasks does.
pub(crate) fn unexpected(what: &str) -> Exit {
    fail(
        exit::UNREACHABLE,
        format_args!("the server did not answer as bgtasks does ({what})"),
    )
}

/// Writes one line to stderr, after `bgtasks: `.
#[inline(never)]
pub(crate) fn say(line: Arguments) {
    // Nothing is left to tell when stderr itself is gone.
    let _ = writeln!(io::stderr(), "bgtasks: {line}");
}

/// A JSON object's members in the order the server wrote them, each value
/// still JSON text (serde_json's own map would sort them).
#[derive(Debug)]
pub(crate) struct Members<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Members<'a> {
    /// Parses a JSON object.
    pub(crate) fn parse(text: &'a str) -> Option<Members<'a>> {
        items(text, b'{').map(Members)
    }

    /// Parses a JSON array of objects.
    pub(crate) fn list(text: &'a str) -> Option<Vec<Members<'a>>> {
        let mut list = Vec::new();
        for (_, item) in items(text, b'[')? {
            list.push(Members::parse(item)?);
        }
        Some(list)
    }

    /// Returns a member's value.
    #[inline(never)]
    pub(crate) fn get(&self, name: &str) -> Option<&'a str> {
        self.0.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }

    /// Returns the names of its members, in order.
    pub(crate) fn names(&self) -> Vec<&'a str> {
        self.0.iter().map(|&(name, _)| name).collect()
    }

    /// Returns a member that is a string, decoded.
    pub(crate) fn string(&self, name: &str) -> Option<String> {
        serde_json::from_str(self.get(name)?).ok()
    }
}

/// Splits the JSON text of an object (`open` is `{`) or an array (`[`)
/// into its items, in order: each member's name (as written: bgtasks
/// writes none with an escape) and value, or `""` and each element; the
/// values are still JSON text. It finds where each value ends — strings,
/// escapes and nesting taken into account — and leaves the rest to
/// whoever reads the values (serde_json, for strings). A scan: serde's
/// visitor for an ordered map cost the binary 0.9 KiB more.
fn items(text: &str, open: u8) -> Option<Vec<(&str, &str)>> {
    let b = text.as_bytes();
    let skip = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let close = open + 2; // `}` follows `{` by two in ASCII, `]` `[` too.
    let mut i = skip(0);
    if b.get(i) != Some(&open) {
        return None;
    }
    let mut items = Vec::new();
    i = skip(i + 1);
    if b.get(i) == Some(&close) {
        return (skip(i + 1) == b.len()).then_some(items);
    }
    loop {
        let mut name = "";
        if open == b'{' {
            let end = value_end(b, i).filter(|_| b[i] == b'"')?;
            name = text.get(i + 1..end - 1)?;
            i = skip(end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip(i + 1);
        }
        let end = value_end(b, i)?;
        items.push((name, text.get(i..end)?));
        i = skip(end);
        match b.get(i)? {
            b',' => i = skip(i + 1),
            &c if c == close => return (skip(i + 1) == b.len()).then_some(items),
            _ => return None,
        }
    }
}

/// Returns where the JSON value that starts at `i` ends.
fn value_end(b: &[u8], start: usize) -> Option<usize> {
    let (mut depth, mut in_string, mut i) = (0usize, false, start);
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            _ if in_string => {}
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => break,
            b'}' | b']' => depth -= 1,
            b',' | b':' if depth == 0 => break,
            c if c.is_ascii_whitespace() && depth == 0 => break,
            _ => {}
        }
        i += 1;
        if depth == 0 && !in_string && matches!(c, b'"' | b'}' | b']') {
            break;
        }
    }
    (i > start && depth == 0 && !in_string && i <= b.len()).then_some(i)
}

/// Parses an answer's body as a JSON object.
pub(crate) fn members(body: &[u8]) -> Result<Members<'_>, Exit> {
    std::str::from_utf8(body)
        .ok()
        .and_then(Members::parse)
        .ok_or_else(|| unexpected("the answer is not a JSON object"))
}

/// Prints a body as the server sent it, on its own line.
pub(crate) fn write_json(out: &mut impl Write, body: &[u8]) -> Result<(), Exit> {
    out.write_all(body)?;
    if !body.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Prints an object one member a line: its name, a colon, and its value,
/// the values in one column.
pub(crate) fn write_members(out: &mut impl Write, object: &Members) -> io::Result<()> {
    let mut cells = Vec::new();
    for &(name, value) in &object.0 {
        cells.push(one_line(name) + ":");
        cells.push(plain(value));
    }
    write_columns(out, &cells, 2)
}

/// Prints rows as a table: a header line of the column names, then a line
/// per row.
pub(crate) fn write_table(
    out: &mut impl Write,
    rows: &[Members],
    columns: &[&str],
) -> io::Result<()> {
    let mut cells: Vec<String> = columns.iter().map(|c| one_line(c)).collect();
    for row in rows {
        for column in columns {
            cells.push(row.get(column).map_or_else(|| "-".to_string(), plain));
        }
    }
    write_columns(out, &cells, columns.len())
}

/// Prints cells, `columns` a line, each column as wide as its widest cell
/// and two spaces from the next.
#[inline(never)]
fn write_columns(out: &mut dyn Write, cells: &[String], columns: usize) -> io::Result<()> {
    let mut widths = vec![0; columns];
    for (i, cell) in cells.iter().enumerate() {
        let width = &mut widths[i % columns];
        // Bytes, not characters: every column but the last (a label or a
        // value, never padded) holds ASCII names, ids, numbers and times.
        *width = (*width).max(cell.len());
    }
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        let width = widths[i % columns];
        let _ = write!(line, "{cell:<width$}  ");
        if (i + 1) % columns == 0 {
            writeln!(out, "{}", line.trim_ascii_end())?;
            line.clear();
        }
    }
    Ok(())
}

/// Returns an event as one line for people: its name, then its members
/// as `name=value` — a string bare unless it is empty or holds a space, a
/// quote or `=` (then it is its JSON, which quotes it), an object as its
/// JSON on one line; nulls and arrays (the queues of `stats`) left out.
pub(crate) fn event_line(name: &str, data: &str) -> String {
    let mut line = one_line(name);
    let Some(object) = Members::parse(data) else {
        return line + " " + &one_line(data);
    };
    for &(key, value) in &object.0 {
        let raw = value;
        if raw == "null" || raw.starts_with('[') {
            continue;
        }
        let mut text = plain(value);
        if raw.starts_with('"') && (text.is_empty() || text.contains([' ', '"', '='])) {
            text = one_line(raw);
        }
        let _ = write!(line, " {}={text}", one_line(key));
    }
    line
}

/// Returns a value as people read it: a string without its quotes and
/// its last line breaks (kept quoted and escaped when it holds other
/// control characters — more lines, or codes that could drive a
/// terminal), `-` for null, anything else as its JSON on one line.
pub(crate) fn plain(text: &str) -> String {
    if text == "null" {
        return "-".to_string();
    }
    match serde_json::from_str::<String>(text) {
        Ok(s) if !s.trim_ascii_end().contains(char::is_control) => s.trim_ascii_end().to_string(),
        _ => one_line(text),
    }
}

/// Returns JSON text on one line, safe for a terminal: each run of
/// whitespace between tokens (where JSON has its line breaks) becomes one
/// space, and a control character (which can only be inside a string) its
/// `\u` escape, which means the same in JSON.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped, mut space) = (false, false, false);
    for c in text.chars() {
        if !in_string && c.is_ascii_whitespace() {
            space = true;
            continue;
        }
        if std::mem::take(&mut space) && !out.is_empty() {
            out.push(' ');
        }
        if c.is_control() {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
        if escaped {
            escaped = false;
        } else if in_string && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_string = !in_string;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_the_servers_order_and_print_safely() {
        let body = br#"{"id": "x1", "task_id": "two words", "state": "running", "attempt": 1,
            "error": null, "result": {"a":
            [1, 2]}, "label": "\u001b[31mred", "del": "a\u007fb",
            "stderr": "one line\n", "lines": "one\ntwo\n"}"#;
        let object = members(body).unwrap();
        let mut out = Vec::new();
        write_members(&mut out, &object).unwrap();
        let expected = "id:       x1\n\
                        task_id:  two words\n\
                        state:    running\n\
                        attempt:  1\n\
                        error:    -\n\
                        result:   {\"a\": [1, 2]}\n\
                        label:    \"\\u001b[31mred\"\n\
                        del:      \"a\\u007fb\"\n\
                        stderr:   one line\n\
                        lines:    \"one\\ntwo\\n\"\n";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert!(members(b"[1, 2]").is_err());
        assert!(members(b"\xff").is_err());
    }

    #[test]
    fn tables_have_one_header_line_and_aligned_columns() {
        let rows = r#"[{"name": "default", "workers": 10, "paused": false},
                       {"name": "backup", "workers": 1, "paused": true, "extra": 0}]"#;
        let rows = Members::list(rows).unwrap();
        let mut out = Vec::new();
        write_table(&mut out, &rows, &["name", "workers", "paused", "rate"]).unwrap();
        let expected = "name     workers  paused  rate\n\
                        default  10       false   -\n\
                        backup   1        true    -\n";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        let mut out = Vec::new();
        let columns = [
            "id",
            "state",
            "queue",
            "kind",
            "attempt",
            "created_at",
            "task_id",
        ];
        write_table(&mut out, &[], &columns).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "id  state  queue  kind  attempt  created_at  task_id\n"
        );
    }

    #[test]
    fn json_items_are_split_where_their_values_end() {
        /// JSON text, what it opens with, and its items.
        type Case<'a> = (&'a str, u8, Option<&'a [(&'a str, &'a str)]>);
        let cases: &[Case] = &[
            ("{}", b'{', Some(&[])),
            (" [ ] ", b'[', Some(&[])),
            (
                r#"{"a": 1, "b":"x,y}", "c" : {"d": [1, "]"]}, "e": null}"#,
                b'{',
                Some(&[
                    ("a", "1"),
                    ("b", r#""x,y}""#),
                    ("c", r#"{"d": [1, "]"]}"#),
                    ("e", "null"),
                ]),
            ),
            (
                r#"{"q": "say \"hi\" \\", "n": -1.5e3}"#,
                b'{',
                Some(&[("q", r#""say \"hi\" \\""#), ("n", "-1.5e3")]),
            ),
            (
                "[{\"id\": \"a\"},\n {\"id\": \"b\"}]",
                b'[',
                Some(&[("", r#"{"id": "a"}"#), ("", r#"{"id": "b"}"#)]),
            ),
            ("[1, 2]", b'{', None),
            (r#"{"a" 1}"#, b'{', None),
            (r#"{"a": 1"#, b'{', None),
            (r#"{"a": 1,}"#, b'{', None),
            (r#"{"a": "open}"#, b'{', None),
            (r#"{"a": 1} x"#, b'{', None),
            (r#"{a: 1}"#, b'{', None),
            ("", b'{', None),
        ];
        for (text, open, expected) in cases {
            assert_eq!(items(text, *open).as_deref(), *expected, "{text}");
        }
    }

    #[test]
    fn events_print_as_one_line_each() {
        let task = r#"{"id": "a1", "task_id": "two words", "kind": "sleep", "queue": "default",
            "state": "running", "attempt": 1, "progress": null, "at": "2026-12-07T20:00:00.000Z"}"#;
        assert_eq!(
            event_line("task", task),
            "task id=a1 task_id=\"two words\" kind=sleep queue=default state=running \
             attempt=1 at=2026-12-07T20:00:00.000Z"
        );
        let progress = r#"{"id": "a1", "task_id": "x=y", "progress": {"done":
            3}, "label": "", "tab": "a\tb"}"#;
        assert_eq!(
            event_line("task", progress),
            "task id=a1 task_id=\"x=y\" progress={\"done\": 3} label=\"\" tab=\"a\\tb\""
        );
        let stats = r#"{"counts": {"queued": 1, "running": 2}, "queues": [{"name": "default"}],
            "accepted_total": 3}"#;
        assert_eq!(
            event_line("stats", stats),
            "stats counts={\"queued\": 1, \"running\": 2} accepted_total=3"
        );
        assert_eq!(event_line("odd", "not json\n"), "odd not json");
        assert_eq!(
            one_line("{\"a b\\\"\\t\" :\n\t[ 1 ] }"),
            "{\"a b\\\"\\t\" : [ 1 ] }"
        );
    }
}
