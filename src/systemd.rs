//! The service manager's notifications (`sd_notify`): `READY=1` and
//! `STOPPING=1` on `$NOTIFY_SOCKET`, for systemd's `Type=notify`.
//!
//! The protocol is one datagram on a Unix socket, so it is written here in
//! a few lines ([`notify_service_manager`]) rather than taken from a crate.
//! It is best effort by design: a server started by hand, or under another
//! supervisor, has no socket and sends nothing, and a failure is logged,
//! never fatal. When each word is said is main.rs's business
//! ([`crate::supervise`]: once the listener and the workers run, and when
//! shutdown begins); the unit that uses it is
//! `tests/systemd/bgtasks.service`.

use log::warn;
use std::path::Path;

/// Tells the service manager how the server is doing (`READY=1` once it
/// listens and its workers run, `STOPPING=1` when shutdown begins), if it
/// asked with `NOTIFY_SOCKET` (systemd's `Type=notify`): one datagram to
/// that socket, a path or an abstract name written `@name`. Best effort: a
/// server started by hand has no such socket, and one that cannot be
/// reached is only logged.
pub(crate) fn notify_service_manager(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(Path::new(&path))?,
        };
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        warn!("cannot tell the service manager {state}: {e}");
    }
}
