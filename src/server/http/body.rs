//! Reading a request body off the connection as its head framed it: a Content-Length body read
//! straight into its own buffer, a chunked body through the decoder. The whole body is read
//! before the handler runs, so an unread body can never be taken for the next request.

use std::time::{Duration, Instant};

use super::chunked::ChunkedDecoder;
use super::config::HttpConfig;
use super::conn_io::{ConnIo, Filled};
use super::error::RequestError;
use super::head::{BodyFraming, ParsedHead};

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

pub(crate) fn read_body(
    io: &mut ConnIo,
    head: &ParsedHead,
    config: &HttpConfig,
    deadline: Instant,
) -> Result<Vec<u8>, RequestError> {
    let limit = config.max_body_bytes;
    match head.framing {
        BodyFraming::Empty => Ok(Vec::new()),
        BodyFraming::Length(len) => {
            // Refused before any 100 Continue, so a client that waits never sends the body.
            if len > limit as u64 {
                return Err(RequestError::BodyTooLarge { limit });
            }
            send_continue_if_waiting(io, head);
            read_exact(io, len as usize, deadline)
        }
        BodyFraming::Chunked => {
            send_continue_if_waiting(io, head);
            // Trailers are head-like fields, so the head limit bounds them.
            let mut decoder = ChunkedDecoder::new(limit, config.max_head_bytes);
            let mut body = Vec::new();
            loop {
                let (used, done) = decoder.decode(io.buffered(), &mut body)?;
                io.consume(used);
                if done {
                    return Ok(body);
                }
                expect_bytes(io.fill(time_left(deadline)?)?)?;
            }
        }
    }
}

/// Queued, not written: the read that follows writes the queue before it waits. A client that
/// has already started sending the body is not waiting for it.
fn send_continue_if_waiting(io: &mut ConnIo, head: &ParsedHead) {
    if head.expect_continue && io.buffered().is_empty() {
        io.queue(CONTINUE);
    }
}

/// `len` has been checked against the body limit.
fn read_exact(io: &mut ConnIo, len: usize, deadline: Instant) -> Result<Vec<u8>, RequestError> {
    let mut body = Vec::with_capacity(len);
    let from_buffer = len.min(io.buffered().len());
    body.extend_from_slice(&io.buffered()[..from_buffer]);
    io.consume(from_buffer);
    while body.len() < len {
        let wanted = len - body.len();
        expect_bytes(io.read_into(&mut body, wanted, time_left(deadline)?)?)?;
    }
    Ok(body)
}

fn expect_bytes(filled: Filled) -> Result<(), RequestError> {
    match filled {
        Filled::Bytes(_) => Ok(()),
        Filled::Eof => Err(RequestError::ClientClosed),
        Filled::TimedOut => Err(RequestError::Timeout),
    }
}

pub(crate) fn time_left(deadline: Instant) -> Result<Duration, RequestError> {
    deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()).ok_or(RequestError::Timeout)
}
