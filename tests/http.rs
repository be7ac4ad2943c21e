//! SPEC §3: the HTTP/1.1 layer, over raw sockets.

mod common;

use common::{Server, closes, read_one, read_response};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

/// Sends `bytes` on a stream.
fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).unwrap();
}

#[test]
fn keep_alive_is_the_default_for_http_1_1() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    for _ in 0..3 {
        send(&mut stream, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = read_response(&mut stream).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None);
    }
    let body = r#"{"task_id": "k", "work_duration": "0s"}"#;
    send(
        &mut stream,
        common::post_request("/tasks", &[], body).as_bytes(),
    );
    assert_eq!(read_response(&mut stream).unwrap().status, 202);
    assert!(!closes(&mut stream, Duration::from_millis(200)));
}

#[test]
fn connection_close_is_honoured() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    send(
        &mut stream,
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let r = read_response(&mut stream).unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closes(&mut stream, Duration::from_secs(5)));
}

#[test]
fn http_1_0_closes_unless_it_asks_for_keep_alive() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    send(&mut stream, b"GET /healthz HTTP/1.0\r\n\r\n");
    let r = read_response(&mut stream).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), None);
    assert!(closes(&mut stream, Duration::from_secs(5)));

    let mut stream = server.connect();
    for _ in 0..2 {
        send(
            &mut stream,
            b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        );
        let r = read_response(&mut stream).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    assert!(!closes(&mut stream, Duration::from_millis(200)));
}

#[test]
fn a_body_is_exactly_content_length_bytes() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    // The body is sent in pieces, and the next request follows it at once.
    let body = r#"{"task_id": "cl", "work_duration": "0s"}"#;
    let request = common::post_request("/tasks", &[], body);
    let (a, b) = request.split_at(request.len() - 10);
    send(&mut stream, a.as_bytes());
    std::thread::sleep(Duration::from_millis(50));
    send(
        &mut stream,
        format!("{b}GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    );
    let r = read_response(&mut stream).unwrap();
    assert_eq!((r.status, r.json()["task_id"].as_str()), (202, Some("cl")));
    assert_eq!(read_response(&mut stream).unwrap().status, 200);
}

#[test]
fn every_response_has_a_content_length() {
    // The harness's reader asserts Content-Length on every response; this
    // walks every status the routes produce.
    let server = Server::start(&["--workers", "1", "--buffer", "1", "--token", "s3cret"]);
    let auth = "Authorization: Bearer s3cret";
    let statuses: Vec<u16> = [
        server.raw(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"),
        server.raw(b"GET /tasks HTTP/1.1\r\nHost: t\r\n\r\n"),
        server.raw(format!("GET /nowhere HTTP/1.1\r\nHost: t\r\n{auth}\r\n\r\n").as_bytes()),
        server.raw(format!("DELETE /tasks HTTP/1.1\r\nHost: t\r\n{auth}\r\n\r\n").as_bytes()),
        server.post_with("/tasks", &[auth], "{}"),
        server.raw(b"GET / HTTP/2.0\r\nHost: t\r\n\r\n"),
    ]
    .iter()
    .map(|r| r.status)
    .collect();
    assert_eq!(statuses, [200, 401, 404, 405, 400, 505]);
}

#[test]
fn a_head_larger_than_16_kib_is_431() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    let filler = "a".repeat(17 * 1024);
    send(
        &mut stream,
        format!("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Filler: {filler}\r\n\r\n").as_bytes(),
    );
    let r = read_response(&mut stream).unwrap();
    assert_eq!(r.status, 431);
    assert_eq!(r.header("connection"), Some("close"));
    // Just under the limit is fine.
    let filler = "a".repeat(16 * 1024 - 100);
    let r = server
        .raw(format!("GET /healthz HTTP/1.1\r\nHost: t\r\nX-Filler: {filler}\r\n\r\n").as_bytes());
    assert_eq!(r.status, 200);
}

#[test]
fn a_body_larger_than_max_body_is_413() {
    let server = Server::start(&["--max-body", "64"]);
    let body = format!(
        r#"{{"task_id": "{}", "work_duration": "0s"}}"#,
        "x".repeat(40)
    );
    assert!(body.len() > 64);
    let mut stream = server.connect();
    send(
        &mut stream,
        common::post_request("/tasks", &[], &body).as_bytes(),
    );
    let r = read_response(&mut stream).unwrap();
    assert_eq!(r.status, 413);
    assert!(closes(&mut stream, Duration::from_secs(5)));
    let body = r#"{"work_duration": "0s"}"#;
    assert_eq!(server.post("/tasks", body).status, 202);
}

#[test]
fn an_interim_100_continue_precedes_the_body() {
    let server = Server::start(&[]);
    let mut stream = server.connect();
    let body = r#"{"task_id": "e", "work_duration": "0s"}"#;
    send(
        &mut stream,
        format!(
            "POST /tasks HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(read_one(&mut stream).unwrap().status, 100);
    send(&mut stream, body.as_bytes());
    assert_eq!(read_one(&mut stream).unwrap().status, 202);
}

#[test]
fn head_gets_the_get_answers_head_and_no_body() {
    let server = Server::start(&[]);
    let list = server.get("/tasks");
    let mut stream = server.connect();
    send(
        &mut stream,
        b"HEAD /tasks HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    // Read the head of the HEAD answer by hand: no body follows it, so the
    // next bytes are the pipelined GET's answer.
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        std::io::Read::read_exact(&mut stream, &mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let length = format!("\r\nContent-Length: {}\r\n", list.body.len());
    assert!(head.contains(&length), "{head}");
    assert!(
        head.contains("\r\nContent-Type: application/json\r\n"),
        "{head}"
    );
    let next = read_response(&mut stream).unwrap();
    assert_eq!(
        (next.status, next.text().as_str()),
        (200, r#"{"status": "ok"}"#)
    );
}
