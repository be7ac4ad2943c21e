//! Checking a submission: the body of `POST /tasks` (or a `--schedule`
//! template) turned into a [`NewTask`], or the sentence of its `400`.
//!
//! Every rule a task must pass before it exists is here, and only here:
//! a `--schedule` template is checked at start-up by the same
//! [`parse_submission`], so a schedule that starts makes only tasks a POST
//! would be given. It is pure — it reads the configuration and the clock,
//! never the store — so a bad body is refused before the store lock is
//! taken. Where the original Go server had an answer (`failed to read POST
//! body`, `failed to parse work duration in request`), the sentence is
//! kept word for word: its clients match it.

use crate::{
    config::Config,
    json::quoted,
    response::Response,
    task::{IdRef, IdempotencyKey, MAX_AFTER, MAX_ATTEMPTS, NewTask, Text, fingerprint},
    time::{now_millis, parse_duration, parse_rfc3339},
};
use serde::Deserialize;

use std::time::Duration;

/// The members a submission body may have. Strings borrow from the body
/// when they have no escapes; `null` counts as absent.
#[derive(Deserialize)]
struct Submission<'a> {
    /// The client's label.
    #[serde(borrow, default)]
    pub(crate) task_id: Option<std::borrow::Cow<'a, str>>,
    /// How long a `sleep` task lasts.
    #[serde(borrow, default)]
    pub(crate) work_duration: Option<std::borrow::Cow<'a, str>>,
    /// The task kind.
    #[serde(borrow, default)]
    pub(crate) kind: Option<std::borrow::Cow<'a, str>>,
    /// Anything, handed to the handler.
    #[serde(borrow, default)]
    pub(crate) payload: Option<&'a serde_json::value::RawValue>,
    /// The per-attempt timeout.
    #[serde(borrow, default)]
    pub(crate) timeout: Option<std::borrow::Cow<'a, str>>,
    /// Attempts allowed.
    #[serde(default)]
    pub(crate) max_attempts: Option<serde_json::Number>,
    /// The queue to run in.
    #[serde(borrow, default)]
    pub(crate) queue: Option<std::borrow::Cow<'a, str>>,
    /// When to start, as an RFC 3339 time.
    #[serde(borrow, default)]
    pub(crate) run_at: Option<std::borrow::Cow<'a, str>>,
    /// How long from now to start.
    #[serde(borrow, default)]
    pub(crate) delay: Option<std::borrow::Cow<'a, str>>,
    /// The tasks to run after, read by [`parse_after`].
    #[serde(borrow, default)]
    pub(crate) after: Option<&'a serde_json::value::RawValue>,
}

/// The furthest ahead a task may be delayed: a year and a leap day, so
/// that "this time next year" always fits.
const MAX_DELAY: Duration = Duration::from_secs(366 * 86_400);

/// The longest `Idempotency-Key`: the IETF draft sets no limit, and keys
/// are kept in memory with their task, so they are kept to a short line.
const MAX_KEY_LEN: usize = 255;

/// The original server's answer to a body it cannot read, word for word.
const BAD_BODY: &str = "failed to read POST body";

/// The most submissions in one batch (SPEC §15): a thousand tasks share
/// one request and one fsync, and the whole batch is checked and created
/// under the store lock, which a larger one would hold too long.
pub(crate) const MAX_BATCH: usize = 1000;

/// The original server's answer to a bad `work_duration`, word for word.
const BAD_DURATION: &str = "failed to parse work duration in request";

/// Checks a submission body and turns it into a [`NewTask`], or the
/// sentence of the `400` that explains what is wrong. `--schedule`
/// templates are checked by the same function, so a template that starts
/// is one a POST would accept.
pub(crate) fn parse_submission(config: &Config, body: &[u8]) -> Result<NewTask, String> {
    parse_item(config, body, None)
}

/// Checks a submission, as [`parse_submission`] does; `item` is its index
/// when it is an item of a batch, whose `after` may name an earlier item
/// as `"#N"`.
fn parse_item(config: &Config, body: &[u8], item: Option<usize>) -> Result<NewTask, String> {
    // serde would read a JSON array as a struct's fields in order: only an
    // object is a task.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(BAD_BODY.into());
    }
    // Checked as UTF-8 once, so that serde need not check each string again.
    let body = std::str::from_utf8(body).map_err(|_| BAD_BODY)?;
    let s: Submission = serde_json::from_str(body).map_err(|_| BAD_BODY)?;
    let kind = match s.kind.as_deref() {
        None | Some("sleep") => None,
        Some(name) => match config.handlers.iter().find(|h| &*h.kind == name) {
            Some(h) => Some(h.kind.clone()),
            None => return Err(format!("unknown task kind {}", quoted(name))),
        },
    };
    match (&s.work_duration, &kind) {
        (Some(d), _) if parse_duration(d).is_err() => return Err(BAD_DURATION.into()),
        (None, None) => return Err(BAD_DURATION.into()),
        _ => {}
    }
    if let Some(t) = &s.timeout
        && parse_duration(t).ok().is_none_or(|d| d.is_zero())
    {
        return Err("timeout must be a duration greater than zero, such as \"30s\"".into());
    }
    let max_attempts = match s.max_attempts.as_ref().map(serde_json::Number::as_u64) {
        None => 1,
        Some(Some(n)) if n >= 1 && n <= u64::from(*MAX_ATTEMPTS.end()) => n as u8,
        Some(_) => {
            return Err(format!(
                "max_attempts must be an integer from {} to {}",
                MAX_ATTEMPTS.start(),
                MAX_ATTEMPTS.end()
            ));
        }
    };
    let queue = task_queue(config, s.queue.as_deref(), kind.as_deref())?;
    let run_at = start_time(s.run_at.as_deref(), s.delay.as_deref())?;
    let after = s.after.map(|a| parse_after(a, item)).transpose()?;
    Ok(NewTask {
        label: s.task_id.as_deref().map(Text::new),
        work_duration: s.work_duration.as_deref().map(Text::new),
        kind,
        payload: s.payload.map(|p| p.get().into()),
        timeout: s.timeout.as_deref().map(Text::new),
        max_attempts,
        key: None,
        queue,
        run_at,
        schedule: None,
        after,
        retry_of: None,
    })
}

/// Checks a batch body (SPEC §15): a JSON array of 1 to [`MAX_BATCH`]
/// submission objects, each checked by [`parse_submission`]. The error is
/// the `400`'s sentence and, for a bad item, its index.
pub(crate) fn parse_batch(
    config: &Config,
    body: &[u8],
) -> Result<Vec<NewTask>, (String, Option<usize>)> {
    let body = std::str::from_utf8(body).map_err(|_| (BAD_BODY.to_string(), None))?;
    let items: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(body).map_err(|_| (BAD_BODY.to_string(), None))?;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err((format!("a batch holds 1 to {MAX_BATCH} submissions"), None));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            parse_item(config, item.get().as_bytes(), Some(i)).map_err(|e| (e, Some(i)))
        })
        .collect()
}

/// The answer to an `after` that is not an array of 1 to [`MAX_AFTER`].
const BAD_AFTER: &str = "after must be an array of 1 to 32 task ids";

/// Reads a submission's `after`: 1 to [`MAX_AFTER`] distinct strings, each
/// shaped like an id — or, in item `item` of a batch, `"#N"` naming an
/// earlier item (SPEC §15). Whether each id names a retained task is
/// the store's to check ([`check_after`](crate::deps::check_after)).
fn parse_after(
    raw: &serde_json::value::RawValue,
    item: Option<usize>,
) -> Result<Box<[IdRef]>, String> {
    let items: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(raw.get()).map_err(|_| BAD_AFTER)?;
    if items.is_empty() || items.len() > MAX_AFTER {
        return Err(BAD_AFTER.into());
    }
    let mut ids: Vec<IdRef> = Vec::with_capacity(items.len());
    for entry in items {
        let Ok(text) = serde_json::from_str::<std::borrow::Cow<str>>(entry.get()) else {
            return Err(format!(
                "after: {} is not a task id (a string)",
                shortened(entry.get())
            ));
        };
        let earlier = item.and_then(|own| {
            let n = text.strip_prefix('#')?;
            let n = n
                .parse::<usize>()
                .ok()
                .filter(|_| n.bytes().all(|b| b.is_ascii_digit()));
            Some(
                n.filter(|&n| n < own)
                    .map(IdRef::batch_item_ref)
                    .ok_or_else(|| {
                        format!(
                            "after: {} names no earlier item of this batch",
                            quoted(&shortened(&text))
                        )
                    }),
            )
        });
        let Some(id) = earlier
            .transpose()?
            .or_else(|| IdRef::parse(text.as_bytes()))
        else {
            return Err(format!(
                "after: {} is not the id of a task this server made",
                quoted(&shortened(&text))
            ));
        };
        if ids.contains(&id) {
            return Err(format!("after: {} is named twice", quoted(&text)));
        }
        ids.push(id);
    }
    Ok(ids.into())
}

/// The most characters of a client's text an error sentence quotes: an
/// id is 9 to 26, and a sentence should stay one line.
const QUOTED_TEXT: usize = 40;

/// Cuts text to at most [`QUOTED_TEXT`] characters, marking a cut with `…`.
fn shortened(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(QUOTED_TEXT) {
        Some((at, _)) => format!("{}…", &text[..at]).into(),
        None => text.into(),
    }
}

/// Finds the index of a task's queue: the one it names, else the one named
/// like its kind, else `default`. An unknown name is an error.
pub(crate) fn task_queue(
    config: &Config,
    named: Option<&str>,
    kind: Option<&str>,
) -> Result<u8, String> {
    let find = |name: &str| config.queues.iter().position(|q| &*q.name == name);
    let q = match named {
        Some(name) => find(name).ok_or_else(|| format!("unknown queue {}", quoted(name)))?,
        None => kind.and_then(find).unwrap_or(0),
    };
    // There are at most MAX_QUEUES, so the index fits.
    Ok(q as u8)
}

/// Finds when a task may start, ms since the epoch, from `run_at` or
/// `delay`; 0 for at once. A time in the past means at once too.
fn start_time(run_at: Option<&str>, delay: Option<&str>) -> Result<u64, String> {
    let now = now_millis();
    let latest = now + MAX_DELAY.as_millis() as u64;
    let at = match (run_at, delay) {
        (None, None) => return Ok(0),
        (Some(_), Some(_)) => return Err("run_at and delay cannot be used together".into()),
        (Some(text), None) => match parse_rfc3339(text) {
            Some(ms) if ms > 0 => ms as u64,
            // In the past, so at once; the store counts time from 1970, so
            // such a run_at is not kept.
            Some(_) => return Ok(0),
            None => {
                return Err(
                    "run_at must be an RFC 3339 time such as \"2026-12-01T03:00:00Z\"".into(),
                );
            }
        },
        (None, Some(text)) => match parse_duration(text) {
            Ok(delay) if delay <= MAX_DELAY => now + delay.as_millis() as u64,
            Ok(_) => return Err("delay must be at most 366 days".into()),
            Err(_) => return Err("delay must be a duration such as \"10m\"".into()),
        },
    };
    if at > latest {
        return Err("run_at must be at most 366 days ahead".into());
    }
    Ok(at)
}

/// Checks an `Idempotency-Key` header and fingerprints the request it
/// came with: its route and body.
pub(crate) fn parse_key(key: &[u8], route: &str, body: &[u8]) -> Result<IdempotencyKey, Response> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.iter().all(u8::is_ascii_graphic) {
        return Err(Response::error(
            400,
            &format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        ));
    }
    Ok(IdempotencyKey {
        // Visible ASCII is UTF-8.
        text: std::str::from_utf8(key).unwrap_or_default().into(),
        fingerprint: fingerprint(route, body),
    })
}
