//! JSON written by hand into a byte buffer: strings, numbers, `null` and
//! JSON text kept as it came.
//!
//! Every answer and event that shows a task — its status, a list page, a
//! `task` event — is written straight into the bytes that go out, from
//! the record itself and under the store lock: no `serde_json::Value` in
//! between, and nothing copied out of a record to render it. These few
//! writers are all that takes. serde_json still reads everything that
//! comes in (submission bodies, journal lines) and escapes the rare string
//! that needs it, so both directions agree on what a JSON string is (the
//! unit test below holds [`write_json_str`]'s fast path to serde_json's
//! output). JSON text a task keeps — payload, result, progress — was
//! checked when it arrived and is copied as it is ([`write_raw_opt`]).

/// Appends JSON text as it is, or `null`.
pub(crate) fn write_raw_opt(out: &mut Vec<u8>, json: Option<&str>) {
    out.extend_from_slice(json.unwrap_or("null").as_bytes());
}

/// Lets `write!` append to a `Vec<u8>` through `fmt::Write`, which cannot
/// fail, so callers may ignore its `Result`.
pub(crate) struct VecWriter<'a>(pub(crate) &'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Appends `s` as a JSON string literal.
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Tuning: names and kinds are written into every status and event and
    // almost never need escaping, so they are copied when they do not.
    if s.bytes().all(|b| b >= b' ' && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Serializing a `&str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends `s` as a JSON string, or `null`.
pub(crate) fn write_json_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends `n` in decimal.
pub(crate) fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Returns `name` as a JSON string literal, for a sentence that names it.
pub(crate) fn quoted(name: &str) -> String {
    let mut out = Vec::with_capacity(name.len() + 2);
    write_json_str(&mut out, name);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped_as_serde_json_escapes_them() {
        let cases = [
            "",
            "sleep",
            "default",
            "a b",
            "é✓",
            "\"",
            "\\",
            "a\"b",
            "\n",
            "\u{1f}",
            "\u{7f}",
            "x\ty",
            "</script>",
        ];
        for case in cases {
            let mut out = Vec::new();
            write_json_str(&mut out, case);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(case).unwrap()
            );
        }
    }
}
