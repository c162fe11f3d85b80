//! Graceful shutdown: a flag the connections consult, a handle that fires it (from tests, an
//! admin endpoint or a signal), and the SIGTERM/SIGINT wiring.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::error::HttpError;
use super::server::Shared;

/// Whether, and since when, the server is shutting down, and how far the drain has gone.
pub(crate) struct ShutdownState {
    triggered: AtomicBool,
    since: Mutex<Option<Instant>>,
    fired: Condvar,
    /// The drain timeout passed: handlers still waiting for results must give up and answer
    /// with an error (a stream ends with an error event) before their connections are closed.
    cut: AtomicBool,
    /// The drain is over: the accept loop stops and the listener closes.
    accepting_stopped: AtomicBool,
}

impl ShutdownState {
    pub(crate) fn new() -> Self {
        ShutdownState {
            triggered: AtomicBool::new(false),
            since: Mutex::new(None),
            fired: Condvar::new(),
            cut: AtomicBool::new(false),
            accepting_stopped: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    pub(crate) fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub(crate) fn accepting_stopped(&self) -> bool {
        self.accepting_stopped.load(Ordering::SeqCst)
    }

    /// Sets the flag; true only for the call that set it.
    pub(crate) fn stop_accepting(&self) -> bool {
        !self.accepting_stopped.swap(true, Ordering::SeqCst)
    }

    /// SeqCst: see `Registration::set_idle`.
    pub(crate) fn is_triggered(&self) -> bool {
        self.triggered.load(Ordering::SeqCst)
    }

    /// Sets the flag; true only for the call that set it.
    pub(crate) fn fire(&self) -> bool {
        let mut since = self.since.lock().unwrap_or_else(|poison| poison.into_inner());
        if since.is_some() {
            return false;
        }
        *since = Some(Instant::now());
        self.triggered.store(true, Ordering::SeqCst);
        self.fired.notify_all();
        true
    }

    /// Blocks the calling OS thread until the flag is set; returns when it was set.
    pub(crate) fn wait_fired(&self) -> Instant {
        let mut since = self.since.lock().unwrap_or_else(|poison| poison.into_inner());
        loop {
            if let Some(at) = *since {
                return at;
            }
            since = self.fired.wait(since).unwrap_or_else(|poison| poison.into_inner());
        }
    }
}

/// Starts a graceful shutdown of one [`Server`](super::Server): it closes idle keep-alive
/// connections and lets running requests finish (their responses carry `Connection: close`)
/// until the drain timeout. New connections are still accepted while it drains, so that a load
/// balancer's readiness probe gets an answer (handlers see [`Responder::draining`]) rather than a
/// refused connection; the listener closes when the drain ends.
///
/// [`Responder::draining`]: super::Responder::draining Cheap to clone, safe to fire more than once and
/// from any thread or coroutine.
#[derive(Clone)]
pub struct ShutdownHandle {
    pub(crate) shared: Arc<Shared>,
}

impl ShutdownHandle {
    pub fn trigger(&self) {
        self.shared.begin_shutdown();
    }

    pub fn is_triggered(&self) -> bool {
        self.shared.shutdown.is_triggered()
    }
}

/// Fires `handle` on the first SIGTERM or SIGINT; a second one exits the process at once (an
/// operator pressing Ctrl-C twice does not want to wait for the drain). The signals are watched
/// by a plain thread, returned so the caller may keep or ignore it.
pub fn shutdown_on_signals(handle: ShutdownHandle) -> Result<JoinHandle<()>, HttpError> {
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(HttpError::Signals)?;
    let watcher = std::thread::Builder::new()
        .name("kiln-signals".to_owned())
        .spawn(move || {
            let mut received = 0;
            for signal in signals.forever() {
                received += 1;
                if received == 1 {
                    tracing::info!(signal, "shutting down: draining running requests");
                    handle.trigger();
                } else {
                    tracing::warn!(signal, "second signal: exiting without waiting for the drain");
                    std::process::exit(128 + signal);
                }
            }
        })
        .map_err(HttpError::Signals)?;
    Ok(watcher)
}
