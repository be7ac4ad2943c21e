//! TODO systemd

#[allow(unused_imports)]
use crate::{
    config::*, conn::*, cron::*, events::*, handlers::*, http::*, idle::*, journal::*, json::*,
    later::*, logger::*, metrics::*, queue::*, record::*, response::*, routes::*, shared::*,
    store::*, submit::*, task::*, time::*, trigger::*,
};
use async_channel::{Receiver, Sender, TrySendError};
use async_executor::Executor;
use async_io::{Async, Timer};
use log::{debug, error, info, warn};
use serde::Deserialize;
use smol::future;
use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
