//! What a handler answers through: a whole response ([`Responder::send`]) or a streamed one
//! ([`Responder::stream`], chunk by chunk, each written and flushed at once, for Server-Sent
//! Events), plus a cheap check for whether the client is still there.

use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use super::conn_io::ConnIo;
use super::error::{ResponseError, WaitError};
use super::request::Version;
use super::response::{status_allows_body, write_head, BodyLength, ConnectionHeader, Response};
use super::shutdown::ShutdownState;

/// How a streamed body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamFraming {
    Chunked,
    /// HTTP/1.0 has no chunked encoding: the body ends when the connection closes.
    UntilClose,
    /// HEAD, 204 or 304: the head is all there is; chunks are dropped.
    Bodyless,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Sent,
    Streaming(StreamFraming),
    Finished,
    /// A write failed; the connection must close.
    Broken,
}

/// How the handler left the request, for the connection loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conclusion {
    /// No response was started: the layer answers 500.
    Unanswered,
    /// The response is complete; the connection may serve another request if `keep_alive`.
    Complete { keep_alive: bool },
    /// A stream was left unfinished or a write failed: close, so the client sees a truncated
    /// body rather than a complete-looking one.
    Incomplete,
}

pub struct Responder<'c> {
    io: &'c mut ConnIo,
    shutdown: &'c ShutdownState,
    version: Version,
    head_only: bool,
    /// What the request allows; narrowed when the head is written.
    keep_alive: bool,
    state: State,
    /// Headers every response to this request carries, whole or streamed (`add_header`).
    common_headers: Vec<(Cow<'static, str>, Cow<'static, str>)>,
}

impl<'c> Responder<'c> {
    pub(crate) fn new(
        io: &'c mut ConnIo,
        shutdown: &'c ShutdownState,
        version: Version,
        head_only: bool,
        keep_alive: bool,
    ) -> Self {
        Responder { io, shutdown, version, head_only, keep_alive, state: State::Pending, common_headers: Vec::new() }
    }

    /// Adds a header to whatever response is sent for this request, the handler's or an error,
    /// whole or streamed (a request id, say); set before the response starts.
    pub fn add_header(&mut self, name: impl Into<Cow<'static, str>>, value: impl Into<Cow<'static, str>>) {
        self.common_headers.push((name.into(), value.into()));
    }

    /// Answers with a whole response. It is queued, not written: the connection writes queued
    /// responses together when it next waits for the client (pipelining). For HEAD only the
    /// head is sent, with the Content-Length the body would have.
    pub fn send(&mut self, mut response: Response) -> Result<(), ResponseError> {
        response.headers.extend(self.common_headers.iter().cloned());
        self.check_can_start(&response)?;
        let has_body = status_allows_body(response.status);
        let connection = self.settle_connection(&response, true);
        let length = if has_body { BodyLength::Length(response.body.len()) } else { BodyLength::None };
        write_head(self.io.out_mut(), response.status, &response.headers, length, connection);
        self.state = State::Sent;
        if has_body && !self.head_only {
            if let Err(err) = self.io.queue_or_write(&response.body) {
                self.state = State::Broken;
                return Err(err.into());
            }
        }
        Ok(())
    }

    /// Starts a streamed response: writes `head`'s status and headers now (with any earlier
    /// pipelined responses before them), then `head.body` as the first chunk if not empty.
    /// Chunked on HTTP/1.1; on HTTP/1.0 the body runs until the connection closes.
    pub fn stream(&mut self, mut head: Response) -> Result<BodyStream<'_, 'c>, ResponseError> {
        head.headers.extend(self.common_headers.iter().cloned());
        self.check_can_start(&head)?;
        let framing = if self.head_only || !status_allows_body(head.status) {
            StreamFraming::Bodyless
        } else if self.version == Version::Http11 {
            StreamFraming::Chunked
        } else {
            StreamFraming::UntilClose
        };
        let connection = self.settle_connection(&head, framing != StreamFraming::UntilClose);
        // HEAD gets the framing header a GET would have.
        let length = match framing {
            StreamFraming::Chunked => BodyLength::Chunked,
            StreamFraming::UntilClose => BodyLength::UntilClose,
            StreamFraming::Bodyless if self.version == Version::Http11 && status_allows_body(head.status) => {
                BodyLength::Chunked
            }
            StreamFraming::Bodyless => BodyLength::None,
        };
        write_head(self.io.out_mut(), head.status, &head.headers, length, connection);
        self.state = State::Streaming(framing);
        // The client should see the status before the first token is ready.
        if let Err(err) = self.io.flush() {
            self.state = State::Broken;
            return Err(err.into());
        }
        let mut stream = BodyStream { responder: self };
        stream.send(&head.body)?;
        Ok(stream)
    }

    /// Whether the client has closed or reset the connection. Cheap (one non-blocking peek, no
    /// waiting), so it can be asked every engine step. Pipelined data from the client counts as
    /// "still there"; a client that half-closes its sending side counts as gone.
    pub fn client_disconnected(&self) -> bool {
        self.io.peer_gone()
    }

    /// Whether the server is shutting down: it finishes running requests but should take no
    /// new work (readiness answers 503).
    pub fn draining(&self) -> bool {
        self.shutdown.is_triggered()
    }

    /// Waits for one value on `results` (a may channel: the engine's threads send into it, this
    /// coroutine parks without holding an OS thread), checking every `poll` whether the client
    /// left or the server's drain timeout passed. On `ClientGone` or `ShutdownTimeout`, cancel the
    /// request so the engine stops; after `ShutdownTimeout`, answer with an error promptly.
    pub fn wait_for<T>(&self, results: &may::sync::mpsc::Receiver<T>, poll: Duration) -> Result<T, WaitError> {
        loop {
            // Checked before every wait: a stream that always has its next token ready never
            // times out here.
            if self.shutdown.is_cut() {
                return Err(WaitError::ShutdownTimeout);
            }
            match results.recv_timeout(poll) {
                Ok(value) => return Ok(value),
                Err(RecvTimeoutError::Timeout) => {
                    if self.client_disconnected() {
                        return Err(WaitError::ClientGone);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err(WaitError::ChannelClosed),
            }
        }
    }

    pub(crate) fn conclusion(&self) -> Conclusion {
        match self.state {
            State::Pending => Conclusion::Unanswered,
            State::Sent | State::Finished | State::Streaming(StreamFraming::Bodyless) => {
                Conclusion::Complete { keep_alive: self.keep_alive }
            }
            State::Streaming(StreamFraming::Chunked) | State::Broken => Conclusion::Incomplete,
            // The body ends with the connection: closing completes it.
            State::Streaming(StreamFraming::UntilClose) => Conclusion::Complete { keep_alive: false },
        }
    }

    fn check_can_start(&self, response: &Response) -> Result<(), ResponseError> {
        if self.state != State::Pending {
            return Err(ResponseError::AlreadyResponded);
        }
        response.validate()
    }

    /// Decides, as the head is written, whether the connection stays open after this response.
    fn settle_connection(&mut self, response: &Response, framing_allows: bool) -> ConnectionHeader {
        self.keep_alive =
            self.keep_alive && framing_allows && !response.asks_to_close() && !self.shutdown.is_triggered();
        match (self.keep_alive, self.version) {
            (false, _) => ConnectionHeader::Close,
            (true, Version::Http10) => ConnectionHeader::KeepAlive,
            (true, Version::Http11) => ConnectionHeader::Omit,
        }
    }
}

/// The body of a streamed response. Each [`send`](BodyStream::send) is written and flushed at
/// once; an error means the client is gone or stopped reading for longer than the write
/// timeout. Dropping it without [`finish`](BodyStream::finish) closes the connection without
/// the terminating chunk, so the client knows the body is incomplete.
pub struct BodyStream<'r, 'c> {
    responder: &'r mut Responder<'c>,
}

impl BodyStream<'_, '_> {
    /// Writes one chunk (for SSE, one or more whole `data: ...\n\n` events). Empty input is
    /// skipped: an empty chunk would end the body.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), ResponseError> {
        let responder = &mut *self.responder;
        let framing = match responder.state {
            State::Streaming(framing) => framing,
            _ => return Err(broken_pipe()),
        };
        if bytes.is_empty() || framing == StreamFraming::Bodyless {
            return Ok(());
        }
        let out = responder.io.out_mut();
        if framing == StreamFraming::Chunked {
            // Writes into a Vec cannot fail.
            let _ = write!(out, "{:x}\r\n", bytes.len());
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(bytes);
        }
        responder.flush_stream()
    }

    /// Ends the body (the terminating chunk) and flushes it.
    pub fn finish(self) -> Result<(), ResponseError> {
        let responder = self.responder;
        match responder.state {
            State::Streaming(StreamFraming::Chunked) => {
                responder.io.queue(b"0\r\n\r\n");
                responder.flush_stream()?;
            }
            State::Streaming(_) => {}
            _ => return Err(broken_pipe()),
        }
        responder.state = State::Finished;
        Ok(())
    }

    /// See [`Responder::client_disconnected`].
    pub fn client_disconnected(&self) -> bool {
        self.responder.client_disconnected()
    }

    /// See [`Responder::draining`].
    pub fn draining(&self) -> bool {
        self.responder.draining()
    }

    /// See [`Responder::wait_for`]: waits for the next token while watching the client, which
    /// matters before the first token (a long prefill), when no write would fail yet.
    pub fn wait_for<T>(&self, results: &may::sync::mpsc::Receiver<T>, poll: Duration) -> Result<T, WaitError> {
        self.responder.wait_for(results, poll)
    }
}

impl Responder<'_> {
    fn flush_stream(&mut self) -> Result<(), ResponseError> {
        self.io.flush().map_err(|err| {
            self.state = State::Broken;
            ResponseError::Io(err)
        })
    }
}

fn broken_pipe() -> ResponseError {
    ResponseError::Io(io::Error::new(io::ErrorKind::BrokenPipe, "an earlier write on this response failed"))
}
