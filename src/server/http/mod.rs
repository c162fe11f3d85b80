//! Our HTTP/1.1 layer: one `may` coroutine per connection, heads parsed with `httparse`,
//! pipelined responses written in batches, streamed (chunked) responses for Server-Sent Events.
//!
//! Why not `may_minihttp`, which the design first named: it accepts at most 16 request headers
//! (the OpenAI Python SDK sends 17), cannot stream (the body is written only after the handler
//! returns), panics on a non-numeric Content-Length, runs a second request hidden in an unread
//! body (request smuggling), and ignores `Connection: close`, HEAD, `Expect: 100-continue`,
//! chunked request bodies and timeouts. The layer it would give us is small, so we write it.
//!
//! One job per file: `config` (limits and timeouts), `head` (request head → framing decision),
//! `chunked` (chunked body decoder), `body` (reading a body off the socket), `conn_io` (socket
//! with batched output), `response` (response type and head serialization), `responder` (what a
//! handler answers through, streaming included), `connection` (the per-connection loop),
//! `tracker` (open connections), `shutdown` (graceful stop and signals), `server` (listener and
//! accept loop), `date` (the Date header), `error` (the error types).
//!
//! ```no_run
//! use std::time::Duration;
//! use kiln::server::http::{shutdown_on_signals, HttpConfig, Request, Responder, Response, Server};
//!
//! fn handle(_request: Request, responder: &mut Responder<'_>) {
//!     // The engine (plain threads) sends tokens into a may channel; waiting on it parks this
//!     // coroutine, not an OS thread.
//!     let (tokens_tx, tokens_rx) = may::sync::mpsc::channel::<String>();
//!     std::thread::spawn(move || {
//!         for token in ["Hello", ",", " world"] {
//!             let _ = tokens_tx.send(token.to_owned());
//!         }
//!     });
//!     let head = Response::new(200).header("Content-Type", "text/event-stream");
//!     let Ok(mut events) = responder.stream(head) else { return };
//!     // Err: the engine finished (sender dropped) or the client left (cancel the generation).
//!     while let Ok(token) = events.wait_for(&tokens_rx, Duration::from_millis(20)) {
//!         if events.send(format!("data: {token}\n\n").as_bytes()).is_err() {
//!             return; // the client left or stopped reading
//!         }
//!     }
//!     let _ = events.finish();
//! }
//!
//! let server = Server::bind("127.0.0.1:8080".parse().unwrap(), HttpConfig::default(), handle)?;
//! shutdown_on_signals(server.shutdown_handle())?;
//! let _report = server.wait(); // returns after SIGTERM/SIGINT and the drain
//! # Ok::<(), kiln::server::http::HttpError>(())
//! ```

mod body;
pub(crate) mod chunked;
mod config;
mod conn_io;
mod connection;
mod date;
mod error;
mod handler;
pub(crate) mod head;
mod request;
mod responder;
mod response;
mod server;
mod shutdown;
mod tracker;

pub use config::HttpConfig;
pub use error::{HttpError, ResponseError, WaitError};
pub use handler::Handler;
pub use request::{Headers, Request, Version};
pub use responder::{BodyStream, Responder};
pub use response::Response;
pub use server::{Server, ShutdownReport};
pub use shutdown::{shutdown_on_signals, ShutdownHandle};
