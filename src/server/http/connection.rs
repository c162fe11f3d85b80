//! The per-connection loop, run on the connection's coroutine: read a head, read its body,
//! call the handler, repeat while the connection may be kept alive. Any framing error is
//! answered after the responses already queued, then the connection closes: past a framing
//! error we cannot know where the next request starts.

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use super::body::{read_body, time_left};
use super::conn_io::{ConnIo, Filled};
use super::error::RequestError;
use super::head::{parse_head, ParsedHead};
use super::request::Request;
use super::responder::{Conclusion, Responder};
use super::response::write_layer_error;
use super::server::Shared;

pub(crate) fn serve(mut io: ConnIo, peer: SocketAddr, shared: &Shared) {
    let linger = shared.config.linger_timeout;
    if let Err(err) = io.configure(shared.config.write_timeout) {
        tracing::debug!(%peer, %err, "cannot configure the socket");
        return;
    }
    let mut served_before = false;
    loop {
        let (head, deadline) = match read_head(&mut io, shared, served_before) {
            Ok(Some(found)) => found,
            Ok(None) => return io.close(linger),
            Err(err) => return reject(io, err, false, peer, linger),
        };
        let head_only = head.method == "HEAD";
        let body = match read_body(&mut io, &head, &shared.config, deadline) {
            Ok(body) => body,
            Err(err) => return reject(io, err, head_only, peer, linger),
        };
        if !run_handler(&mut io, head, body, peer, shared) {
            return io.close(linger);
        }
        served_before = true;
    }
}

/// The next request head and the deadline for the rest of the request, or `None` when the
/// connection should close quietly: the client closed, it stayed idle past the keep-alive
/// timeout, or the server is shutting down between requests.
fn read_head(
    io: &mut ConnIo,
    shared: &Shared,
    served_before: bool,
) -> Result<Option<(ParsedHead, Instant)>, RequestError> {
    let config = &shared.config;
    // A pipelined request already buffered is in progress; otherwise the clock starts with its
    // first byte.
    let mut deadline = (!io.buffered().is_empty()).then(|| Instant::now() + config.request_timeout);
    // httparse re-scans from the start each time, so it runs only on the first bytes (garbage
    // such as a TLS handshake is refused at once) and when a new line arrived: a client sending
    // a byte at a time costs one parse per line, not per byte.
    let mut parse_now = deadline.is_some();
    loop {
        if parse_now {
            if let Some(head) = parse_head(io.buffered(), config.max_headers)? {
                if head.len > config.max_head_bytes {
                    return Err(RequestError::HeadTooLarge { limit: config.max_head_bytes });
                }
                io.consume(head.len);
                let deadline = deadline.unwrap_or_else(|| Instant::now() + config.request_timeout);
                return Ok(Some((head, deadline)));
            }
        }
        if io.buffered().len() >= config.max_head_bytes {
            return Err(RequestError::HeadTooLarge { limit: config.max_head_bytes });
        }
        let seen = io.buffered().len();
        match deadline {
            Some(deadline) => match io.fill(time_left(deadline)?)? {
                Filled::Bytes(_) => {}
                Filled::Eof => return Err(RequestError::ClientClosed),
                Filled::TimedOut => return Err(RequestError::Timeout),
            },
            None => {
                if !wait_idle(io, shared, served_before) {
                    return Ok(None);
                }
                deadline = Some(Instant::now() + config.request_timeout);
            }
        }
        parse_now = seen == 0 || io.buffered()[seen..].contains(&b'\n');
    }
}

/// Waits for the first byte of the next request; false when the connection should close.
/// Marked idle meanwhile, so a shutdown can close it without cutting a request.
///
/// While the server drains, a kept-alive connection closes instead of waiting, but a new one
/// still gets its one request (a readiness probe learns the server is draining), waiting for it
/// no longer than the linger timeout so that it cannot hold the drain open.
fn wait_idle(io: &mut ConnIo, shared: &Shared, served_before: bool) -> bool {
    let config = &shared.config;
    if shared.shutdown.is_triggered() {
        if served_before {
            return false;
        }
        let filled = io.fill(config.keep_alive_timeout.min(config.linger_timeout));
        return matches!(filled, Ok(Filled::Bytes(_)));
    }
    io.set_idle(true);
    // Checked again after marking: a shutdown that scanned for idle connections before the
    // mark is visible here (see `Registration::set_idle`).
    let filled = if shared.shutdown.is_triggered() { Ok(Filled::Eof) } else { io.fill(config.keep_alive_timeout) };
    io.set_idle(false);
    matches!(filled, Ok(Filled::Bytes(_)))
}

/// Answers a request that could not be read (if anyone is left to answer) after the responses
/// already queued, then closes.
fn reject(mut io: ConnIo, err: RequestError, head_only: bool, peer: SocketAddr, linger: std::time::Duration) {
    match err.status() {
        Some(status) => {
            tracing::debug!(%peer, status, %err, "rejecting request");
            write_layer_error(io.out_mut(), status, &err.to_string(), head_only);
        }
        None => tracing::debug!(%peer, %err, "connection ended mid-request"),
    }
    io.close(linger);
}

/// Runs the handler for one request; true if the connection may serve another.
fn run_handler(io: &mut ConnIo, head: ParsedHead, body: Vec<u8>, peer: SocketAddr, shared: &Shared) -> bool {
    let head_only = head.method == "HEAD";
    let request = Request {
        method: head.method,
        path: head.path,
        query: head.query,
        version: head.version,
        headers: head.headers,
        body,
        peer_addr: peer,
    };
    let mut responder = Responder::new(io, &shared.shutdown, head.version, head_only, head.keep_alive);
    // The handler is API code over user input: a bug there must cost one request, not the
    // server. Nothing it could leave half-updated is shared with other requests except
    // through its own synchronisation.
    let outcome = catch_unwind(AssertUnwindSafe(|| shared.handler.handle(request, &mut responder)));
    let conclusion = responder.conclusion();
    if let Err(panic) = &outcome {
        let message = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("non-string panic payload");
        tracing::error!(%peer, panic = message, "handler panicked; closing the connection");
    }
    match conclusion {
        Conclusion::Unanswered => {
            if outcome.is_ok() {
                tracing::error!(%peer, "handler returned without answering");
            }
            write_layer_error(io.out_mut(), 500, "internal error while handling the request", head_only);
            false
        }
        // After a panic the handler's state is suspect; do not reuse its connection.
        Conclusion::Complete { keep_alive } => keep_alive && outcome.is_ok(),
        Conclusion::Incomplete => false,
    }
}
