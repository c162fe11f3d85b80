//! Errors of the HTTP layer: starting the server (`HttpError`), reading a request
//! (`RequestError`, each mapped to the status sent before the connection closes), and what a
//! handler can get back while answering (`ResponseError`, `WaitError`).

use std::io;

use thiserror::Error;

use super::chunked::ChunkError;

/// Starting or configuring the server failed.
#[derive(Debug, Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("cannot start the accept coroutine: {0}")]
    Spawn(io::Error),
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signals(io::Error),
    #[error("invalid HTTP configuration: {0}")]
    Config(&'static str),
}

/// A request that could not be read. The connection is closed after the answer (if any),
/// because after a framing error we no longer know where the next request starts.
#[derive(Debug, Error)]
pub(crate) enum RequestError {
    #[error("malformed request head: {0}")]
    MalformedHead(httparse::Error),
    #[error("request head larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("more than {limit} header lines")]
    TooManyHeaders { limit: usize },
    #[error("Content-Length must be digits only")]
    BadContentLength,
    #[error("Content-Length values disagree")]
    ConflictingContentLength,
    #[error("Transfer-Encoding and Content-Length together")]
    LengthAndTransferEncoding,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingInHttp10,
    #[error("Transfer-Encoding must be chunked, applied once and last")]
    BadTransferEncoding,
    #[error("transfer coding not supported (only chunked is)")]
    UnsupportedTransferCoding,
    #[error("only the 100-continue expectation is supported")]
    UnsupportedExpectation,
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("malformed chunked body: {0}")]
    BadChunk(ChunkError),
    #[error("request not received within the request timeout")]
    Timeout,
    #[error("client closed the connection mid-request")]
    ClientClosed,
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

impl RequestError {
    /// The status to answer with, or `None` when no one is left to answer.
    pub(crate) fn status(&self) -> Option<u16> {
        use RequestError::*;
        match self {
            MalformedHead(_)
            | BadContentLength
            | ConflictingContentLength
            | LengthAndTransferEncoding
            | TransferEncodingInHttp10
            | BadTransferEncoding
            | BadChunk(_) => Some(400),
            Timeout => Some(408),
            BodyTooLarge { .. } => Some(413),
            UnsupportedExpectation => Some(417),
            HeadTooLarge { .. } | TooManyHeaders { .. } => Some(431),
            UnsupportedTransferCoding => Some(501),
            ClientClosed | Io(_) => None,
        }
    }
}

impl From<ChunkError> for RequestError {
    fn from(err: ChunkError) -> Self {
        match err {
            ChunkError::TooLarge { limit } => RequestError::BodyTooLarge { limit },
            other => RequestError::BadChunk(other),
        }
    }
}

/// Answering a request failed. `Io` while streaming means the client left or stopped reading
/// for longer than the write timeout: stop generating.
#[derive(Debug, Error)]
pub enum ResponseError {
    #[error("writing the response failed (client gone or not reading): {0}")]
    Io(#[from] io::Error),
    #[error("this request was already answered")]
    AlreadyResponded,
    #[error("invalid response status {0} (must be 200..=599)")]
    InvalidStatus(u16),
    #[error("invalid response header {0:?} (name must be a token, value must not contain CR, LF or NUL)")]
    InvalidHeader(String),
}

/// Waiting for a result while watching the client ([`Responder::wait_for`](super::Responder::wait_for)).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WaitError {
    #[error("the client disconnected")]
    ClientGone,
    #[error("the sender dropped without sending")]
    ChannelClosed,
    #[error("the server's shutdown timeout passed")]
    ShutdownTimeout,
}
