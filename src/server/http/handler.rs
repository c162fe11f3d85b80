//! What the API layer implements: one call per request, answered through a [`Responder`].

use super::request::Request;
use super::responder::Responder;

/// Answers requests. Called once per request, on the connection's may coroutine.
///
/// Rules, because the handler runs on a coroutine sharing an OS thread with many others:
/// - Never block the OS thread: no `std::sync::mpsc::Receiver::recv`, `std::thread::sleep` or
///   blocking file/socket reads. Wait for the engine on `may::sync::mpsc` channels (plain
///   threads can send into them) or with [`Responder::wait_for`], which also watches for the
///   client leaving.
/// - Do not hold a reference to thread-local data across such a wait: the coroutine may resume
///   on another thread.
/// - Answer exactly once, with [`Responder::send`] or [`Responder::stream`]. Returning without
///   an answer, or panicking before one, sends 500 and closes the connection; the server lives on.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request, responder: &mut Responder<'_>);
}

impl<F> Handler for F
where
    F: Fn(Request, &mut Responder<'_>) + Send + Sync + 'static,
{
    fn handle(&self, request: Request, responder: &mut Responder<'_>) {
        self(request, responder)
    }
}
