//! Routing and each route's answer: the [`Route`] a request head names
//! ([`choose_route`]) and what it answers ([`answer`], [`submit`]), the
//! `/openapi.json` document included.
//!
//! A route is chosen from the head alone, before the body is read, so that
//! a request that will be refused anyway (no token, with `Expect:
//! 100-continue`) is refused without waiting for its body. With
//! `--token`, every request but a `GET` or `HEAD` of `/healthz` and of the
//! dashboard (`/`) needs `Authorization: Bearer`, unknown paths and wrong
//! methods included, compared in constant time ([`bearer_matches`]).
//! `HEAD` takes the route `GET` would and gets its head without the body;
//! an unknown path is `404` whatever the method, a known one with the
//! wrong method `405` with `Allow`. The answers are built
//! under the store lock straight into the response body: nothing is copied
//! out of a record to render it.
//!
//! A route never touches the socket. What cannot be answered at once is
//! handed back to the connection as a [`Reply`] — a long poll, an event
//! stream, a submission (it needs its body), a change waiting for the
//! disk — and [`crate::conn`] does the waiting. The store is changed only
//! through its methods, each call under the lock for one statement or one
//! block (the rule of [`Shared::store`](crate::shared::Shared::store)). A
//! full queue is answered without the lock at all ([`submit`]).
//!
//! [`OPENAPI`] describes every route; the unit test
//! `the_openapi_document_describes_every_route_and_only_routes` holds it
//! to the router, and CI runs Schemathesis against a live server with it
//! (`tests/ecosystem/schemathesis.sh`). A new route changes both.

use crate::{
    config::Config,
    events::{EventFilter, dashboard},
    http::{Head, HttpError, Method, percent_decode, trim_ows},
    json::{VecWriter, write_json_opt, write_json_str},
    metrics,
    queue::Queue,
    response::Response,
    shared::Shared,
    store::{Admission, Store},
    submit::{parse_batch, parse_key, parse_submission, task_queue},
    table::Lookup,
    task::{Cancel, IdRef, IdempotencyKey, NewTask, STATES, State, Task, TaskId, Text},
    time::{parse_duration, write_timestamp},
};
use async_channel::Receiver;
use log::{debug, info};
use smol::future;
use std::fmt::Write as _;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The routes, as chosen from a request head.
#[derive(Debug, PartialEq)]
pub(crate) enum Route {
    /// `POST /queue-task`, `POST /tasks`: the route's path, which an
    /// idempotency key's fingerprint includes.
    Submit(&'static str),
    /// `GET /tasks`.
    List,
    /// `GET /tasks/{id}`; `None` for a malformed id.
    Status(Option<IdRef>),
    /// `POST /tasks/{id}/cancel`.
    Cancel(Option<IdRef>),
    /// `POST /tasks/{id}/retry`.
    Retry(Option<IdRef>),
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `GET /queues`.
    Queues,
    /// `GET /schedules`.
    Schedules,
    /// `GET /events`.
    Events,
    /// `GET /`: the dashboard.
    Dashboard,
    /// `GET /openapi.json`: this API described.
    OpenApi,
    /// `POST /queues/{name}/pause`; the name as given, `None` if it is
    /// not UTF-8.
    Pause(Option<Box<str>>),
    /// `POST /queues/{name}/resume`; the name as for `Pause`.
    Resume(Option<Box<str>>),
    /// A path no route has.
    NotFound,
    /// A known path with another method; the methods it allows.
    NotAllowed(&'static str),
    /// A token is required and the request lacks it.
    Unauthorized,
}

/// Chooses the route for a request head. `head` is the head's bytes.
///
/// `HEAD` takes the route `GET` would (RFC 9110 §9.1: load balancers and
/// health checkers probe with it); the answer is sent without its body.
pub(crate) fn choose_route(
    head: &Head,
    bytes: &[u8],
    token: Option<&str>,
) -> Result<Route, HttpError> {
    let route = match (resource(&bytes[head.path.clone()])?, head.method) {
        (None, _) => Route::NotFound,
        (Some(r), Method::Get | Method::Head) => r.get.unwrap_or(Route::NotAllowed(r.allow)),
        (Some(r), Method::Post) => r.post.unwrap_or(Route::NotAllowed(r.allow)),
        (Some(r), Method::Other) => Route::NotAllowed(r.allow),
    };
    if let Some(token) = token {
        // The page loads without the token: it asks for it.
        let open = matches!(route, Route::Health | Route::Dashboard);
        let given = head.authorization.clone().map(|r| &bytes[r]);
        if !open && !bearer_matches(given, token) {
            return Ok(Route::Unauthorized);
        }
    }
    Ok(route)
}

/// What a path names: the route of each method it answers, and the
/// methods for `Allow`.
struct Resource {
    /// The route for `GET` (and `HEAD`).
    pub(crate) get: Option<Route>,
    /// The route for `POST`.
    post: Option<Route>,
    /// The `Allow` header of a `405`.
    pub(crate) allow: &'static str,
}

impl Resource {
    /// Makes a resource that answers `GET` and `HEAD`.
    pub(crate) fn get(route: Route) -> Resource {
        Resource {
            get: Some(route),
            post: None,
            allow: "GET, HEAD",
        }
    }

    /// Makes a resource that answers `POST`.
    fn post(route: Route) -> Resource {
        Resource {
            get: None,
            post: Some(route),
            allow: "POST",
        }
    }
}

/// The most path segments a route has (`/tasks/{id}/cancel`); a longer
/// path names nothing, and its segments are not decoded.
const MAX_SEGMENTS: usize = 3;

/// Finds what a path names; `None` for a path no route has. Segments are
/// percent-decoded one by one, so `%2F` does not split one.
fn resource(path: &[u8]) -> Result<Option<Resource>, HttpError> {
    let mut segments: [std::borrow::Cow<[u8]>; MAX_SEGMENTS] = Default::default();
    let mut count = 0;
    if let Some(rest) = path.strip_prefix(b"/") {
        for segment in rest.split(|&b| b == b'/') {
            if count == MAX_SEGMENTS {
                return Ok(None);
            }
            segments[count] = percent_decode(segment, false).ok_or(HttpError::BadRequest(
                "the request path has a broken percent escape",
            ))?;
            count += 1;
        }
    }
    let [first, second, third] = &segments;
    let id = || IdRef::parse(second);
    Ok(Some(match (count, &first[..], &second[..], &third[..]) {
        (1, b"queue-task", _, _) => Resource::post(Route::Submit("/queue-task")),
        // `/tasks/`, as people type it, is the list too.
        (1, b"tasks", _, _) | (2, b"tasks", b"", _) => Resource {
            get: Some(Route::List),
            post: Some(Route::Submit("/tasks")),
            allow: "GET, HEAD, POST",
        },
        (2, b"tasks", _, _) => Resource::get(Route::Status(id())),
        (3, b"tasks", _, b"cancel") => Resource::post(Route::Cancel(id())),
        (3, b"tasks", _, b"retry") => Resource::post(Route::Retry(id())),
        (1, b"healthz", _, _) => Resource::get(Route::Health),
        (1, b"metrics", _, _) => Resource::get(Route::Metrics),
        (1, b"queues", _, _) => Resource::get(Route::Queues),
        (1, b"schedules", _, _) => Resource::get(Route::Schedules),
        (1, b"events", _, _) => Resource::get(Route::Events),
        (1, b"", _, _) => Resource::get(Route::Dashboard),
        (1, b"openapi.json", _, _) => Resource::get(Route::OpenApi),
        (3, b"queues", name, b"pause") => Resource::post(Route::Pause(queue_name(name))),
        (3, b"queues", name, b"resume") => Resource::post(Route::Resume(queue_name(name))),
        _ => return Ok(None),
    }))
}

/// Reads a queue's name from a path segment; `None` if it is not UTF-8
/// (no queue has such a name).
fn queue_name(segment: &[u8]) -> Option<Box<str>> {
    std::str::from_utf8(segment).ok().map(Box::from)
}

/// Tells whether an `Authorization` value is `Bearer <token>` (the scheme
/// in any case), comparing the token in constant time.
fn bearer_matches(given: Option<&[u8]>, token: &str) -> bool {
    let Some(given) = given else { return false };
    let split = given.iter().position(|&b| b == b' ').unwrap_or(given.len());
    let (scheme, credentials) = given.split_at(split);
    scheme.eq_ignore_ascii_case(b"bearer")
        && constant_time_eq(trim_ows(credentials), token.as_bytes())
}

/// Compares two byte strings in time that depends only on their lengths,
/// so a client cannot find the token one byte at a time by timing answers.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, &x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}

/// What a route answers: at once, or once a long poll ends.
#[derive(Debug)]
pub(crate) enum Reply {
    /// The answer is ready.
    Now(Response),
    /// `GET /tasks/{id}?wait=`: wait for the task to change.
    Poll(LongPoll),
    /// A submission to the route with this path: admit it and, with a
    /// journal, wait for the disk.
    Submit(&'static str),
    /// `POST /tasks/{id}/retry`: a submission too, made of the task `id`
    /// names.
    Retry(Option<IdRef>),
    /// `GET /events` with these filters: stream.
    Events(EventFilter),
    /// A cancel, pause or resume, with a journal: answered once its record
    /// is on disk.
    Change(Pending),
}

/// A long poll in progress.
#[derive(Debug)]
pub(crate) struct LongPoll {
    /// The task waited on.
    pub(crate) id: u64,
    /// Its state when the request arrived.
    pub(crate) seen: State,
    /// When the wait ends regardless.
    pub(crate) until: Instant,
}

/// The OpenAPI 3.1 document of every route, embedded like the dashboard.
/// It needs the token like any route but the two the contract opens: it
/// tells nothing secret, but nothing in the contract exempts it either.
const OPENAPI: &str = include_str!("openapi.json");

/// The longest `?wait=`: longer waits are cut to this, the contract's
/// 60 s (SPEC §2), as long as a keep-alive connection may idle.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(60);

/// Answers a request from its route and head. A submission needs its body
/// and, with a journal, a wait for the disk: it is handed back to the
/// connection as [`Reply::Submit`].
pub(crate) fn answer(shared: &Shared, route: Route, head: &Head, bytes: &[u8]) -> Reply {
    let query = head.query.clone().map(|q| &bytes[q]);
    Reply::Now(match route {
        Route::Submit(route) => return Reply::Submit(route),
        Route::Retry(id) => return Reply::Retry(id),
        Route::List => list_tasks(shared, query),
        Route::Status(id) => return task_status(shared, id, query, head.method),
        Route::Cancel(id) => return cancel_task(shared, id),
        Route::Health if shared.draining.is_fired() => {
            Response::json(503, &b"{\"status\": \"shutting down\"}"[..])
        }
        Route::Health => Response::json(200, &b"{\"status\": \"ok\"}"[..]),
        Route::Metrics => metrics::render(shared),
        Route::Queues => list_queues(shared),
        Route::Schedules => list_schedules(shared),
        Route::Events => {
            let filter = EventFilter::parse(query, &shared.config, &shared.store());
            return match filter {
                Ok(filter) => Reply::Events(filter),
                Err(response) => Reply::Now(response),
            };
        }
        Route::Dashboard => dashboard(),
        Route::OpenApi => Response::json(200, OPENAPI.as_bytes()),
        Route::Pause(name) => return pause_or_resume(shared, name.as_deref(), true),
        Route::Resume(name) => return pause_or_resume(shared, name.as_deref(), false),
        Route::NotFound => Response::error(404, "no such path"),
        Route::NotAllowed(allow) => Response {
            allow: Some(allow),
            ..Response::error(405, "method not allowed")
        },
        Route::Unauthorized => Response {
            authenticate: true,
            ..Response::error(401, "a valid bearer token is required")
        },
    })
}

/// The original server's answer when the queue is full, made once.
const BUSY: &[u8] = br#"{"error": "workers are busy, try again later"}"#;

/// What a submission came to.
#[derive(Debug)]
pub(crate) enum Submitted {
    /// The answer, final.
    Answer(Response),
    /// A `202` to send once the task's record is on disk.
    Saving(Response, Receiver<bool>),
    /// A `200` for a repeated idempotency key, naming the first task.
    Repeat(Response, u64),
}

/// Checks and admits a task, or a batch of them (an array, on `/tasks`
/// only): `POST /queue-task`, `POST /tasks`.
pub(crate) fn submit(shared: &Shared, route: &str, key: Option<&[u8]>, body: &[u8]) -> Submitted {
    let key = match key.map(|key| parse_key(key, route, body)).transpose() {
        Ok(key) => key,
        Err(response) => return Submitted::Answer(response),
    };
    if route == "/tasks" && body.trim_ascii_start().first() == Some(&b'[') {
        return submit_batch(shared, key, body);
    }
    let new = match parse_submission(&shared.config, body) {
        Ok(new) => NewTask { key, ..new },
        Err(sentence) => return Submitted::Answer(Response::error(400, &sentence)),
    };
    // Tuning: a full queue is answered without taking the store lock (the
    // plain version would ask `Store::admit`): full at this instant is
    // reason enough, and the lock stays free for the work — the 503 path
    // then costs less than the 202 path. A repeated key must still find
    // its task, a delayed or waiting task needs no room, and shutdown has
    // its own answer.
    let queue = &shared.queues[usize::from(new.queue)];
    if new.key.is_none()
        && new.run_at == 0
        && new.after.is_none()
        && queue.jobs_tx.is_full()
        && !shared.draining.is_fired()
    {
        return Submitted::Answer(queue_full(shared));
    }
    let label = new.label.clone();
    // One statement: the guard is dropped at its end, and the answer is
    // made without the lock (see `Shared::store`).
    let admission = shared.store().admit(new, &shared.queues);
    admitted(shared, admission, label)
}

/// `POST /tasks/{id}/retry`: submits the failed or cancelled task again,
/// answered like a submission.
pub(crate) fn retry(shared: &Shared, id: Option<IdRef>, key: Option<&[u8]>) -> Submitted {
    let Some(id) = id else {
        return Submitted::Answer(lookup_failure(Lookup::Unknown));
    };
    // The route and the old id are what a retry's request is: its key is
    // fingerprinted with them, so the same key on another task is a 422.
    let route = format!("/tasks/{id}/retry");
    let key = match key.map(|key| parse_key(key, &route, b"")).transpose() {
        Ok(key) => key,
        Err(response) => return Submitted::Answer(response),
    };
    let mut store = shared.store();
    let admission = match store.retry(&id, key, &shared.queues) {
        Ok(admission) => admission,
        Err(Lookup::Found(i)) => {
            let task = &store.tasks()[i];
            let sentence = format!(
                "the task is {}: only a failed or cancelled task can be retried",
                task.state.name()
            );
            let mut body = Vec::with_capacity(384);
            body.push(b'{');
            task.write_members(&mut body, store.names(task), Some(&sentence));
            body.push(b'}');
            return Submitted::Answer(Response::json(409, body));
        }
        Err(other) => return Submitted::Answer(lookup_failure(other)),
    };
    let label = match &admission {
        Admission::Created(task_id, ..) => {
            store.tasks().get(task_id.num).and_then(|t| t.label.clone())
        }
        _ => None,
    };
    drop(store);
    admitted(shared, admission, label)
}

/// Answers a submission from what the store made of it: `202` (with the
/// task's `label`), a repeat's `200`, or a refusal.
fn admitted(shared: &Shared, admission: Admission, label: Option<Text>) -> Submitted {
    let (task_id, state, saved) = match admission {
        Admission::Created(task_id, state, saved) => (task_id, state, saved),
        Admission::Repeat(task_id, label, state) => {
            let label = label.as_ref().map(Text::as_str);
            let response = submitted(200, task_id, label, state);
            return Submitted::Repeat(response, task_id.num);
        }
        other => return Submitted::Answer(refusal(shared, other)),
    };
    let response = submitted(202, task_id, label.as_ref().map(Text::as_str), state);
    debug!("task {task_id} queued");
    match saved {
        Some(saved) => Submitted::Saving(response, saved),
        None => Submitted::Answer(response),
    }
}

/// `POST /tasks` with an array (SPEC §15): checks every item, then
/// admits them all or none, and answers with every task in order.
fn submit_batch(shared: &Shared, key: Option<IdempotencyKey>, body: &[u8]) -> Submitted {
    let news = match parse_batch(&shared.config, body) {
        Ok(news) => news,
        Err((sentence, index)) => return Submitted::Answer(bad_item(&sentence, index)),
    };
    let count = news.len();
    let labels: Vec<Option<Text>> = news.iter().map(|n| n.label.clone()).collect();
    // One statement, as in `submit`.
    let admission = shared.store().admit_batch(news, key, &shared.queues);
    let refused = match admission {
        Ok((made, saved)) => {
            let tasks = made.into_iter().zip(labels);
            let tasks: Vec<_> = tasks
                .map(|((id, state), label)| (id, label, state))
                .collect();
            debug!("a batch of {count} tasks queued");
            let response = batch_answer(202, &tasks);
            return match saved {
                Some(saved) => Submitted::Saving(response, saved),
                None => Submitted::Answer(response),
            };
        }
        Err(refused) => refused,
    };
    Submitted::Answer(match refused {
        Admission::Repeat(first, ..) => {
            let tasks = shared.store().batch(first.num);
            return Submitted::Repeat(batch_answer(200, &tasks), first.num);
        }
        Admission::Full => {
            // Every task of the batch was refused.
            shared
                .rejected
                .fetch_add(count as u64 - 1, Ordering::Relaxed);
            queue_full(shared)
        }
        other => refusal(shared, other),
    })
}

/// Makes the answer to a submission the store refused.
fn refusal(shared: &Shared, refused: Admission) -> Response {
    match refused {
        Admission::KeyReused => Response::error(
            422,
            "this Idempotency-Key was used with a different request",
        ),
        Admission::TooManyScheduled => Response {
            retry_after: Some(shared.config.retry_after),
            ..Response::error(503, "too many scheduled tasks, try again later")
        },
        Admission::ShuttingDown => Response::error(503, "server is shutting down"),
        Admission::BadAfter(sentence) => Response::error(400, &sentence),
        Admission::BadItem(index, sentence) => bad_item(&sentence, Some(index)),
        // A full queue, or (not a refusal) a task made or repeated, which
        // the caller answers itself.
        _ => queue_full(shared),
    }
}

/// Makes a `400` for a batch: with the index of the item at fault, if
/// one is.
fn bad_item(sentence: &str, index: Option<usize>) -> Response {
    let Some(index) = index else {
        return Response::error(400, sentence);
    };
    let mut body = Vec::with_capacity(sentence.len() + 32);
    body.extend_from_slice(b"{\"error\": ");
    write_json_str(&mut body, sentence);
    let _ = write!(VecWriter(&mut body), ", \"index\": {index}}}");
    Response::json(400, body)
}

/// Makes the answer to a batch: `{"tasks": [{"id", "task_id", "state"},
/// …]}`, in order.
fn batch_answer(status: u16, tasks: &[(TaskId, Option<Text>, State)]) -> Response {
    let mut body = Vec::with_capacity(16 + tasks.len() * 80);
    body.extend_from_slice(b"{\"tasks\": [");
    for (i, (id, label, state)) in tasks.iter().enumerate() {
        if i > 0 {
            body.extend_from_slice(b", ");
        }
        body.extend_from_slice(b"{\"id\": ");
        id.write_json(&mut body);
        body.extend_from_slice(b", \"task_id\": ");
        write_json_opt(&mut body, label.as_ref().map(Text::as_str));
        body.extend_from_slice(b", \"state\": \"");
        body.extend_from_slice(state.name().as_bytes());
        body.extend_from_slice(b"\"}");
    }
    body.extend_from_slice(b"]}");
    Response::json(status, body)
}

/// Counts a refusal for a full queue and makes its `503`.
fn queue_full(shared: &Shared) -> Response {
    shared.rejected.fetch_add(1, Ordering::Relaxed);
    // The stats changed. Telling the event streams takes no lock of the
    // store's, and none at all unless a stream waits to hear of it.
    shared.events.changed();
    Response {
        retry_after: Some(shared.config.retry_after),
        ..Response::json(503, BUSY)
    }
}

/// Makes the answer to a submission: `{"status": …, "id": …, "task_id": …,
/// "state": …}` with `Location`.
fn submitted(status: u16, id: TaskId, label: Option<&str>, state: State) -> Response {
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(b"{\"status\": \"task queued successfully\", \"id\": ");
    id.write_json(&mut body);
    body.extend_from_slice(b", \"task_id\": ");
    write_json_opt(&mut body, label);
    body.extend_from_slice(b", \"state\": \"");
    body.extend_from_slice(state.name().as_bytes());
    body.extend_from_slice(b"\"}");
    Response {
        location: Some(id),
        ..Response::json(status, body)
    }
}

/// Returns the value of the last `name=` in a form-encoded query, decoded;
/// `Err` for a broken percent escape.
pub(crate) fn query_param<'a>(
    query: Option<&'a [u8]>,
    name: &str,
) -> Result<Option<std::borrow::Cow<'a, [u8]>>, Response> {
    let mut found = None;
    for pair in query.unwrap_or_default().split(|&b| b == b'&') {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &b""[..]),
        };
        let broken = || Response::error(400, "the query string has a broken percent escape");
        if *percent_decode(k, true).ok_or_else(broken)? == *name.as_bytes() {
            found = Some(percent_decode(v, true).ok_or_else(broken)?);
        }
    }
    Ok(found)
}

/// How many tasks a list shows when `limit` does not say: the contract's
/// 100 (SPEC §2), a screenful for a person and a small answer for a
/// script.
const DEFAULT_LIMIT: usize = 100;

/// The most tasks one list shows: larger `limit`s are cut to this, the
/// contract's 1000 (SPEC §2), so a page's work under the store lock stays
/// short.
const MAX_LIMIT: usize = 1000;

/// The most bytes of tasks one list answer holds (one task always fits),
/// so that no request makes the server hold much more than this for its
/// answer, however large the retained tasks are.
const MAX_PAGE_BYTES: usize = 256 << 10;

/// Reads a list's `limit`: a positive integer of any number of digits,
/// clamped to [`MAX_LIMIT`] (so `99999999999999999999`, too large for any
/// integer type, is 1000 and not an error); `None` for `0`, a sign, or
/// anything but digits.
fn parse_limit(text: &[u8]) -> Option<usize> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let digits = &text[text.iter().take_while(|&&b| b == b'0').count()..];
    // Four significant digits or fewer parse exactly; more are over the cap.
    match digits.len() {
        0 => None,
        1..=4 => Some(
            digits
                .iter()
                .fold(0, |n, &d| n * 10 + usize::from(d - b'0'))
                .min(MAX_LIMIT),
        ),
        _ => Some(MAX_LIMIT),
    }
}

/// What a `GET /tasks` asks for: its filters, its page size, and where
/// the page starts.
#[derive(Debug, Default, PartialEq)]
struct ListQuery<'a> {
    /// Only tasks in this state.
    pub(crate) state: Option<State>,
    /// Only tasks with this `task_id`.
    pub(crate) label: Option<std::borrow::Cow<'a, [u8]>>,
    /// Only tasks of this queue.
    pub(crate) queue: Option<u8>,
    /// The most tasks on the page.
    pub(crate) limit: usize,
    /// Only tasks older than this id (a previous page's last).
    pub(crate) before: Option<IdRef>,
}

impl<'a> ListQuery<'a> {
    /// Reads the query string of a list request; `Err` is its `400`.
    pub(crate) fn parse(
        query: Option<&'a [u8]>,
        config: &Config,
    ) -> Result<ListQuery<'a>, Response> {
        let bad = |sentence: &str| Response::error(400, sentence);
        let state = match query_param(query, "state")? {
            None => None,
            Some(s) => Some(
                std::str::from_utf8(&s)
                    .ok()
                    .and_then(State::from_name)
                    .ok_or_else(|| bad(BAD_STATE))?,
            ),
        };
        let queue = match query_param(query, "queue")? {
            None => None,
            Some(name) => {
                let name = String::from_utf8_lossy(&name);
                Some(task_queue(config, Some(&name), None).map_err(|e| bad(&e))?)
            }
        };
        let limit = match query_param(query, "limit")? {
            None => DEFAULT_LIMIT,
            Some(n) => parse_limit(&n).ok_or_else(|| bad("limit must be a positive integer"))?,
        };
        let before = match query_param(query, "before")? {
            None => None,
            Some(id) => Some(IdRef::parse(&id).ok_or_else(|| bad(BAD_BEFORE))?),
        };
        Ok(ListQuery {
            state,
            label: query_param(query, "task_id")?,
            queue,
            limit,
            before,
        })
    }

    /// Tells whether a task passes the filters.
    pub(crate) fn matches(&self, task: &Task) -> bool {
        task.state != State::Evicted
            && self.state.is_none_or(|s| task.state == s)
            && self.queue.is_none_or(|q| task.queue == q)
            && self.label.as_deref().is_none_or(|l| {
                task.label
                    .as_ref()
                    .is_some_and(|t| t.as_str().as_bytes() == l)
            })
    }

    /// Appends the link to the page after one ending with task `last`:
    /// the same filters and limit, continuing before `last`.
    fn write_next(&self, out: &mut Vec<u8>, last: TaskId, config: &Config) {
        out.extend_from_slice(b"\"/tasks?");
        if let Some(state) = self.state {
            let _ = write!(VecWriter(out), "state={}&", state.name());
        }
        if let Some(q) = self.queue {
            let _ = write!(
                VecWriter(out),
                "queue={}&",
                config.queues[usize::from(q)].name
            );
        }
        if let Some(label) = &self.label {
            out.extend_from_slice(b"task_id=");
            percent_encode(out, label);
            out.push(b'&');
        }
        let _ = write!(VecWriter(out), "limit={}&before=", self.limit);
        last.write(out);
        out.push(b'"');
    }
}

/// The answer to an unknown `state` filter.
const BAD_STATE: &str =
    "state must be one of waiting, scheduled, queued, running, succeeded, failed, cancelled";

/// The answer to a `before` that is not an id this server issued.
const BAD_BEFORE: &str = "before must be the id of a task this server made";

/// Answers `GET /tasks`: a page of the newest retained tasks that pass
/// the filters, the link to the next page, and the counts of all.
fn list_tasks(shared: &Shared, query: Option<&[u8]>) -> Response {
    let query = match ListQuery::parse(query, &shared.config) {
        Ok(query) => query,
        Err(response) => return response,
    };
    let store = shared.store();
    if let Some(before) = &query.before
        && store.tasks().lookup_ref(before) == Lookup::Unknown
    {
        return Response::error(400, BAD_BEFORE);
    }
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(b"{\"tasks\": [");
    let mut matching = store
        .tasks()
        .newest_first(query.before.as_ref().map(|id| id.num))
        .filter(|t| query.matches(t))
        .peekable();
    let (mut listed, mut last) = (0, None);
    let start = body.len();
    while listed < query.limit
        && let Some(task) = matching.peek()
    {
        let mark = body.len();
        if listed > 0 {
            body.extend_from_slice(b", ");
        }
        task.write_json(&mut body, store.names(task));
        if listed > 0 && body.len() - start > MAX_PAGE_BYTES {
            // It does not fit: it begins the next page.
            body.truncate(mark);
            break;
        }
        (listed, last) = (listed + 1, Some(task.id));
        matching.next();
    }
    body.extend_from_slice(b"], \"counts\": ");
    write_counts(&mut body, store.tasks().counts());
    body.extend_from_slice(b", \"next\": ");
    match last.filter(|_| matching.peek().is_some()) {
        Some(last) => query.write_next(&mut body, store.tasks().task_id(last), &shared.config),
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
    Response::json(200, body)
}

/// Appends the counts of tasks by state, as a JSON object.
pub(crate) fn write_counts(out: &mut Vec<u8>, counts: &[usize; STATES.len()]) {
    out.push(b'{');
    for (i, s) in STATES.iter().enumerate() {
        let sep = if i > 0 { ", " } else { "" };
        let _ = write!(VecWriter(out), "{sep}\"{}\": {}", s.name(), counts[i]);
    }
    out.push(b'}');
}

/// Appends `bytes` percent-encoded for a query string: everything but the
/// unreserved characters of RFC 3986 is escaped.
pub(crate) fn percent_encode(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// Answers `GET /tasks/{id}`: the task's status, at once or after a long
/// poll. A
/// `HEAD` is answered at once: it asks what a `GET` would get, and a
/// health checker must not be held for a minute.
fn task_status(shared: &Shared, id: Option<IdRef>, query: Option<&[u8]>, method: Method) -> Reply {
    let wait = match query_param(query, "wait") {
        Err(response) => return Reply::Now(response),
        Ok(None) => Duration::ZERO,
        Ok(Some(text)) => match std::str::from_utf8(&text).ok().map(parse_duration) {
            Some(Ok(wait)) => wait.min(MAX_WAIT),
            _ => {
                return Reply::Now(Response::error(
                    400,
                    "wait must be a duration such as \"30s\"",
                ));
            }
        },
    };
    let store = shared.store();
    let Some(id) = id else {
        return Reply::Now(lookup_failure(Lookup::Unknown));
    };
    match store.tasks().lookup_ref(&id) {
        Lookup::Found(i) => {
            let task = &store.tasks()[i];
            if wait.is_zero() || method == Method::Head || task.state.is_terminal() {
                Reply::Now(task_response(200, &store, i))
            } else {
                Reply::Poll(LongPoll {
                    id: id.num,
                    seen: task.state,
                    until: Instant::now() + wait,
                })
            }
        }
        other => Reply::Now(lookup_failure(other)),
    }
}

/// Makes a response whose body is the status of the task at index `i`.
pub(crate) fn task_response(status: u16, store: &Store, i: usize) -> Response {
    let task = &store.tasks()[i];
    let mut body = Vec::with_capacity(384);
    task.write_json(&mut body, store.names(task));
    Response::json(status, body)
}

/// Makes the `404` or `410` for an id that has no record.
pub(crate) fn lookup_failure(lookup: Lookup) -> Response {
    match lookup {
        Lookup::Gone => Response::error(410, "the task has been evicted (see --keep-finished)"),
        _ => Response::error(404, "task not found"),
    }
}

/// Answers `POST /tasks/{id}/cancel`: at once, or, with a journal, once
/// the cancel's record is on disk ([`answer_change`]).
fn cancel_task(shared: &Shared, id: Option<IdRef>) -> Reply {
    let mut store = shared.store();
    let id = match id.map(|id| (store.tasks().lookup_ref(&id), id.num)) {
        Some((Lookup::Found(_), id)) => id,
        Some((other, _)) => return Reply::Now(lookup_failure(other)),
        None => return Reply::Now(lookup_failure(Lookup::Unknown)),
    };
    Reply::Now(match store.cancel(id, &shared.queues) {
        Ok(Cancel::Saving(saved)) => return Reply::Change(Pending::Cancel(id, saved)),
        Ok(Cancel::Made(i)) => cancelled(&store, id, Ok(i)),
        Err(why) => cancelled(&store, id, Err(why)),
    })
}

/// Answers a cancel from where the task stands: `200` with its status
/// once cancelled (`i`), `409` with it if it had ended already, or the
/// `404`/`410` of an id without a record.
pub(crate) fn cancelled(store: &Store, id: u64, result: Result<usize, Lookup>) -> Response {
    match result {
        Ok(i) => {
            debug!("task {} cancelled", store.tasks().task_id(id));
            task_response(200, store, i)
        }
        Err(Lookup::Found(i)) => {
            let task = &store.tasks()[i];
            let sentence = format!("the task is already {}", task.state.name());
            let mut body = Vec::with_capacity(384);
            body.push(b'{');
            task.write_members(&mut body, store.names(task), Some(&sentence));
            body.push(b'}');
            Response::json(409, body)
        }
        Err(other) => lookup_failure(other),
    }
}

/// Answers `GET /queues`: every queue, `default` first.
fn list_queues(shared: &Shared) -> Response {
    let mut body = Vec::with_capacity(128 * shared.queues.len());
    body.extend_from_slice(b"{\"queues\": [");
    for (i, view) in shared
        .store()
        .queue_views(&shared.config, &shared.queues)
        .iter()
        .enumerate()
    {
        if i > 0 {
            body.extend_from_slice(b", ");
        }
        view.write_json(&mut body);
    }
    body.extend_from_slice(b"]}");
    Response::json(200, body)
}

/// Answers `GET /schedules`: every schedule, with its next and last
/// firing.
fn list_schedules(shared: &Shared) -> Response {
    let mut body = Vec::with_capacity(160 * shared.config.schedules.len() + 16);
    body.extend_from_slice(b"{\"schedules\": [");
    let store = shared.store();
    for (i, (config, state)) in shared
        .config
        .schedules
        .iter()
        .zip(store.schedules())
        .enumerate()
    {
        if i > 0 {
            body.extend_from_slice(b", ");
        }
        body.extend_from_slice(b"{\"name\": ");
        write_json_str(&mut body, &config.name);
        body.extend_from_slice(b", \"spec\": ");
        write_json_str(&mut body, &config.spec_text);
        body.extend_from_slice(b", \"next_at\": ");
        write_timestamp(&mut body, state.next_at());
        body.extend_from_slice(b", \"last_at\": ");
        write_timestamp(&mut body, state.last_at());
        body.extend_from_slice(b", \"last_task\": ");
        match state.last_task() {
            0 => body.extend_from_slice(b"null"),
            id => store.tasks().task_id(id).write_json(&mut body),
        }
        let skipped = state.firings().1;
        let _ = write!(VecWriter(&mut body), ", \"skipped\": {skipped}}}");
    }
    body.extend_from_slice(b"]}");
    Response::json(200, body)
}

/// Answers `POST /queues/{name}/pause` (`paused`) and `/resume`: the queue
/// afterwards, at once or, with a journal, once the change's record is on
/// disk ([`answer_change`]).
fn pause_or_resume(shared: &Shared, name: Option<&str>, paused: bool) -> Reply {
    let Some(q) = name.and_then(|name| shared.queues.iter().position(|q| *q.name == *name)) else {
        return Reply::Now(Response::error(404, "no such queue"));
    };
    let mut store = shared.store();
    if store.is_journaled() {
        return Reply::Change(Pending::Pause(q, paused, store.journal_pause(q, paused)));
    }
    store.set_paused(q, paused, &shared.queues);
    Reply::Now(paused_queue(
        &store,
        &shared.config,
        &shared.queues,
        q,
        paused,
    ))
}

/// Answers a pause or resume of queue `q` that has been made: the queue
/// afterwards.
fn paused_queue(
    store: &Store,
    config: &Config,
    queues: &[Queue],
    q: usize,
    paused: bool,
) -> Response {
    let done = if paused { "paused" } else { "resumed" };
    info!("queue {} {done}", queues[q].name);
    let mut body = Vec::with_capacity(128);
    store.queue_views(config, queues)[q].write_json(&mut body);
    Response::json(200, body)
}

/// A cancel, pause or resume whose record is on its way to disk.
#[derive(Debug)]
pub(crate) enum Pending {
    /// A cancel of this task.
    Cancel(u64, Receiver<bool>),
    /// A pause (`true`) or resume of this queue.
    Pause(usize, bool, Receiver<bool>),
}

/// Waits until the journal writer has dealt with a pending change's record
/// (it makes the change once the record is on disk), then answers as the
/// change made at once would be answered, or with a `503` if the record
/// could not be written: then nothing changed. `None` if shutdown's grace
/// ended first: whether the change was made is unknown, and nothing may
/// be sent.
pub(crate) async fn answer_change(shared: &Shared, pending: Pending) -> Option<Response> {
    let (Pending::Cancel(_, saved) | Pending::Pause(_, _, saved)) = &pending;
    let cut = async {
        shared.grace_over.wait().await;
        None
    };
    // A writer gone at the very end of shutdown wrote nothing more.
    let outcome = async { Some(saved.recv().await == Ok(true)) };
    let saved = future::or(cut, outcome).await?;
    Some(match (pending, saved) {
        (Pending::Cancel(..), false) => not_saved(shared, "the cancel"),
        (Pending::Pause(_, true, _), false) => not_saved(shared, "the pause"),
        (Pending::Pause(_, false, _), false) => not_saved(shared, "the resume"),
        (Pending::Cancel(id, _), true) => {
            let store = shared.store();
            let result = match store.tasks().lookup(id) {
                Lookup::Found(i) if store.tasks()[i].state == State::Cancelled => Ok(i),
                other => Err(other),
            };
            cancelled(&store, id, result)
        }
        (Pending::Pause(q, paused, _), true) => {
            let store = shared.store();
            paused_queue(&store, &shared.config, &shared.queues, q, paused)
        }
    })
}

/// Makes the `503` of a request whose record could not be written: `what`
/// could not be saved to disk.
pub(crate) fn not_saved(shared: &Shared, what: &str) -> Response {
    Response {
        retry_after: Some(shared.config.retry_after),
        ..Response::error(
            503,
            &format!("{what} could not be saved to disk; try again later"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{http::*, task::*};

    use crate::config::tests::config;

    #[test]
    fn a_limit_is_any_positive_integer_clamped_to_1000() {
        let cases: &[(&str, Option<usize>)] = &[
            ("1", Some(1)),
            ("999", Some(999)),
            ("1000", Some(1000)),
            ("1001", Some(1000)),
            ("0007", Some(7)),
            ("99999", Some(1000)),
            ("18446744073709551616", Some(1000)),
            ("99999999999999999999", Some(1000)),
            ("0", None),
            ("000", None),
            ("", None),
            ("-1", None),
            ("+5", None),
            ("1.5", None),
            ("1e3", None),
            (" 5", None),
            ("abc", None),
        ];
        for &(text, expected) in cases {
            assert_eq!(parse_limit(text.as_bytes()), expected, "{text:?}");
        }
    }

    #[test]
    fn next_links_keep_the_filters_and_parse_back() {
        let id = 1_796_000_000_000_000u64;
        let config = config(&["--queue", "slow=1"]);
        let cases: &[(&str, &str)] = &[
            ("", "/tasks?limit=100&before="),
            ("limit=5000", "/tasks?limit=1000&before="),
            (
                "state=queued&task_id=a+b%2Fc%26d%3D%C3%A9&limit=5",
                "/tasks?state=queued&task_id=a%20b%2Fc%26d%3D%C3%A9&limit=5&before=",
            ),
            (
                "queue=slow&state=scheduled",
                "/tasks?state=scheduled&queue=slow&limit=100&before=",
            ),
        ];
        for &(query, link) in cases {
            let parsed = ListQuery::parse(Some(query.as_bytes()), &config).unwrap();
            let mut out = Vec::new();
            parsed.write_next(&mut out, TaskId { node: "", num: id }, &config);
            let mut id_text = Vec::new();
            write_id(&mut id_text, id);
            let expected = format!("\"{link}{}\"", String::from_utf8(id_text).unwrap());
            assert_eq!(String::from_utf8(out.clone()).unwrap(), expected, "{query}");
            // The link's query string reads back as the same filters.
            let text = String::from_utf8(out).unwrap();
            let again = text.trim_matches('"').strip_prefix("/tasks?").unwrap();
            let reparsed = ListQuery::parse(Some(again.as_bytes()), &config).unwrap();
            assert_eq!(reparsed.before.map(|b| b.num), Some(id), "{query}");
            assert_eq!(
                ListQuery {
                    before: None,
                    ..reparsed
                },
                parsed,
                "{query}"
            );
        }
        for bad in [
            "before=abc",
            "before=",
            "before=%zz",
            "limit=0",
            "state=nope",
            "queue=fast",
        ] {
            let parsed = ListQuery::parse(Some(bad.as_bytes()), &config);
            assert!(parsed.is_err(), "{bad}");
        }
    }

    #[test]
    fn bearer_tokens_compare_whole() {
        let cases: &[(Option<&str>, bool)] = &[
            (Some("Bearer s3cret"), true),
            (Some("bearer s3cret"), true),
            (Some("BEARER   s3cret"), true),
            (Some("Bearer s3cre"), false),
            (Some("Bearer s3cret2"), false),
            (Some("Bearer "), false),
            (Some("Basic s3cret"), false),
            (Some("s3cret"), false),
            (None, false),
        ];
        for &(given, ok) in cases {
            assert_eq!(
                bearer_matches(given.map(str::as_bytes), "s3cret"),
                ok,
                "{given:?}"
            );
        }
    }

    #[test]
    fn routes_are_chosen_from_path_and_method() {
        let route = |request: &str, token: Option<&str>| {
            let bytes = request.as_bytes();
            let head = parse_head(bytes).unwrap();
            choose_route(&head, bytes, token)
        };
        let id = 1_796_000_000_000_000u64;
        let mut text = Vec::new();
        write_id(&mut text, id);
        let id_text = String::from_utf8(text).unwrap();
        let cases: Vec<(String, Option<&str>, Result<Route, HttpError>)> = vec![
            (
                "POST /queue-task".into(),
                None,
                Ok(Route::Submit("/queue-task")),
            ),
            (
                "GET /queue-task".into(),
                None,
                Ok(Route::NotAllowed("POST")),
            ),
            (
                "HEAD /queue-task".into(),
                None,
                Ok(Route::NotAllowed("POST")),
            ),
            ("POST /tasks".into(), None, Ok(Route::Submit("/tasks"))),
            ("GET /tasks".into(), None, Ok(Route::List)),
            (
                "PUT /tasks".into(),
                None,
                Ok(Route::NotAllowed("GET, HEAD, POST")),
            ),
            ("HEAD /tasks".into(), None, Ok(Route::List)),
            ("GET /tasks/".into(), None, Ok(Route::List)),
            ("POST /tasks/".into(), None, Ok(Route::Submit("/tasks"))),
            ("GET /tasks//".into(), None, Ok(Route::NotFound)),
            (
                format!("GET /tasks/{id_text}"),
                None,
                Ok(Route::Status(Some(IdRef {
                    num: id,
                    node: Text::new(""),
                }))),
            ),
            (
                format!("GET /tasks/%{:X}{}", id_text.as_bytes()[0], &id_text[1..]),
                None,
                Ok(Route::Status(Some(IdRef {
                    num: id,
                    node: Text::new(""),
                }))),
            ),
            ("GET /tasks/nope".into(), None, Ok(Route::Status(None))),
            (
                format!("GET /tasks/node7_{id_text}"),
                None,
                Ok(Route::Status(Some(IdRef {
                    num: id,
                    node: Text::new("node7_"),
                }))),
            ),
            (
                format!("GET /tasks/Node_{id_text}"),
                None,
                Ok(Route::Status(None)),
            ),
            (
                format!("GET /tasks/_{id_text}"),
                None,
                Ok(Route::Status(None)),
            ),
            (
                format!("GET /tasks/a{id_text}"),
                None,
                Ok(Route::Status(None)),
            ),
            (
                format!("GET /tasks/{}_{id_text}", "n".repeat(17)),
                None,
                Ok(Route::Status(None)),
            ),
            (
                format!("HEAD /tasks/{id_text}"),
                None,
                Ok(Route::Status(Some(IdRef {
                    num: id,
                    node: Text::new(""),
                }))),
            ),
            (
                format!("POST /tasks/{id_text}/cancel"),
                None,
                Ok(Route::Cancel(Some(IdRef {
                    num: id,
                    node: Text::new(""),
                }))),
            ),
            (
                format!("GET /tasks/{id_text}/cancel"),
                None,
                Ok(Route::NotAllowed("POST")),
            ),
            (
                format!("POST /tasks/{id_text}/retry"),
                None,
                Ok(Route::Retry(Some(IdRef {
                    num: id,
                    node: Text::new(""),
                }))),
            ),
            (
                "POST /tasks/nope/retry".into(),
                None,
                Ok(Route::Retry(None)),
            ),
            (
                format!("POST /tasks/{id_text}/cancel/x"),
                None,
                Ok(Route::NotFound),
            ),
            ("GET /tasks%2Fx".into(), None, Ok(Route::NotFound)),
            ("GET /healthz".into(), None, Ok(Route::Health)),
            ("GET /metrics".into(), None, Ok(Route::Metrics)),
            ("GET /".into(), None, Ok(Route::Dashboard)),
            ("GET /".into(), Some("t"), Ok(Route::Dashboard)),
            ("POST /".into(), None, Ok(Route::NotAllowed("GET, HEAD"))),
            ("GET /events".into(), None, Ok(Route::Events)),
            ("GET /events".into(), Some("t"), Ok(Route::Unauthorized)),
            (
                "POST /events".into(),
                None,
                Ok(Route::NotAllowed("GET, HEAD")),
            ),
            ("GET /queues".into(), None, Ok(Route::Queues)),
            (
                "POST /queues/slow/pause".into(),
                None,
                Ok(Route::Pause(Some("slow".into()))),
            ),
            (
                "POST /queues/slow/resume".into(),
                None,
                Ok(Route::Resume(Some("slow".into()))),
            ),
            (
                "GET /queues/slow/pause".into(),
                None,
                Ok(Route::NotAllowed("POST")),
            ),
            ("POST /queues/slow/stop".into(), None, Ok(Route::NotFound)),
            ("GET /schedules".into(), None, Ok(Route::Schedules)),
            ("GET *".into(), None, Ok(Route::NotFound)),
            ("GET /a/b/c/d/e".into(), None, Ok(Route::NotFound)),
            (
                "GET /tasks/%zz".into(),
                None,
                Err(HttpError::BadRequest(
                    "the request path has a broken percent escape",
                )),
            ),
            ("GET /healthz".into(), Some("t"), Ok(Route::Health)),
            ("HEAD /healthz".into(), Some("t"), Ok(Route::Health)),
            ("HEAD /metrics".into(), Some("t"), Ok(Route::Unauthorized)),
            ("HEAD /metrics".into(), None, Ok(Route::Metrics)),
            (
                "DELETE /metrics".into(),
                None,
                Ok(Route::NotAllowed("GET, HEAD")),
            ),
            ("POST /healthz".into(), Some("t"), Ok(Route::Unauthorized)),
            ("GET /tasks".into(), Some("t"), Ok(Route::Unauthorized)),
            ("GET /nowhere".into(), Some("t"), Ok(Route::Unauthorized)),
        ];
        for (line, token, expected) in cases {
            let request = format!("{line} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(route(&request, token), expected, "{line}");
        }
        let authorized = "GET /tasks HTTP/1.1\r\nHost: a\r\nAuthorization: bearer t\r\n\r\n";
        assert_eq!(route(authorized, Some("t")), Ok(Route::List));
    }

    #[test]
    fn the_openapi_document_describes_every_route_and_only_routes() {
        // Where the document has each route; `None` for the refusals,
        // which are answers, not routes. No wildcard: a new route must
        // say where the document describes it.
        fn documented_at(route: &Route) -> Option<(&'static str, &'static str)> {
            Some(match route {
                Route::Submit(path) => (*path, "post"),
                Route::List => ("/tasks", "get"),
                Route::Status(_) => ("/tasks/{id}", "get"),
                Route::Cancel(_) => ("/tasks/{id}/cancel", "post"),
                Route::Retry(_) => ("/tasks/{id}/retry", "post"),
                Route::Health => ("/healthz", "get"),
                Route::Metrics => ("/metrics", "get"),
                Route::Queues => ("/queues", "get"),
                Route::Schedules => ("/schedules", "get"),
                Route::Events => ("/events", "get"),
                Route::Dashboard => ("/", "get"),
                Route::OpenApi => ("/openapi.json", "get"),
                Route::Pause(_) => ("/queues/{name}/pause", "post"),
                Route::Resume(_) => ("/queues/{name}/resume", "post"),
                Route::NotFound | Route::NotAllowed(_) | Route::Unauthorized => return None,
            })
        }
        let route = |method: &str, path: &str| {
            let request = format!(
                "{} {path} HTTP/1.1\r\nHost: t\r\n\r\n",
                method.to_ascii_uppercase()
            );
            let head = parse_head(request.as_bytes()).unwrap();
            choose_route(&head, request.as_bytes(), None).unwrap()
        };
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let mut operations = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let sample = path
                .replace("{id}", "node7_AAAAAAAAA")
                .replace("{name}", "default");
            let methods: Vec<&str> = item.as_object().unwrap().keys().map(|m| &**m).collect();
            for method in ["get", "head", "post", "put", "delete", "patch", "options"] {
                let routed = route(method, &sample);
                // HEAD is documented as its own operation; it is GET's route.
                let as_get = if method == "head" { "get" } else { method };
                if methods.contains(&method) {
                    assert_eq!(
                        documented_at(&routed),
                        Some((&**path, as_get)),
                        "{method} {path} is documented but routed to {routed:?}"
                    );
                    operations.push((path.clone(), method));
                } else {
                    assert!(
                        matches!(routed, Route::NotAllowed(_)),
                        "{method} {path} is routed to {routed:?} but not documented"
                    );
                }
            }
        }
        // Every route the router knows, by a request that reaches it.
        let requests = [
            ("post", "/queue-task"),
            ("get", "/tasks"),
            ("post", "/tasks"),
            ("get", "/tasks/"),
            ("get", "/tasks/AAAAAAAAA"),
            ("post", "/tasks/AAAAAAAAA/cancel"),
            ("post", "/tasks/AAAAAAAAA/retry"),
            ("get", "/healthz"),
            ("get", "/metrics"),
            ("get", "/queues"),
            ("post", "/queues/batch/pause"),
            ("post", "/queues/batch/resume"),
            ("get", "/schedules"),
            ("get", "/events"),
            ("get", "/"),
            ("get", "/openapi.json"),
        ];
        for (method, path) in requests {
            let routed = route(method, path);
            let (at, as_method) = documented_at(&routed).unwrap();
            assert_eq!(as_method, method, "{method} {path}");
            let twins: &[&str] = if method == "get" {
                &["get", "head"]
            } else {
                &[method]
            };
            for twin in twins {
                assert!(
                    operations.contains(&(at.to_string(), twin)),
                    "{twin} {path} ({routed:?}) is not in the document at {at}"
                );
            }
        }
    }
}
