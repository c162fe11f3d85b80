//! The engine on its own thread, for the server: requests arrive over a channel from any number
//! of handles and join between steps; the thread sleeps while nothing is left to compute.
//!
//! A dead engine is never hidden: when a step fails fatally or panics, every request it held and
//! every one still queued gets an error event, the handles report the failure (`/health` turns
//! 503 on it) and the thread ends, so that the server can shut down and exit non-zero for its
//! supervisor to restart it. The engine is not restarted in-process: after a device failure or a
//! panic its state, and the device's, cannot be trusted.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::backend::Backend;

use super::core::{Engine, EngineConfig, EngineLimits, EngineSnapshot, SubmitError};
use super::metrics::EngineMetrics;
use super::request::{EngineEvent, EngineRequest};
use super::text::TokenText;

// Sent once per request over a bounded channel: boxing the large variant would add an allocation
// and save nothing that matters.
#[allow(clippy::large_enum_variant)]
enum Command {
    Submit(EngineRequest),
    Snapshot(mpsc::Sender<EngineSnapshot>),
}

/// The server's side of the engine: submit requests, read metrics. Cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    sender: SyncSender<Command>,
    waiting: Arc<AtomicUsize>,
    limits: EngineLimits,
    /// Why the engine stopped, once it has.
    failure: Arc<OnceLock<String>>,
    heartbeat: Arc<Heartbeat>,
    pub metrics: Arc<EngineMetrics>,
}

/// When the engine loop last went round: between steps, and every `HEARTBEAT_PERIOD` while it
/// sleeps with nothing to do. A liveness probe reads how long ago that was: a step that never
/// returns (a hung device, a deadlock) shows as a heartbeat that stops.
struct Heartbeat {
    started: Instant,
    last_ms: AtomicU64,
}

impl Heartbeat {
    fn beat(&self) {
        self.last_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn age(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// How often an idle engine loop wakes only to beat.
const HEARTBEAT_PERIOD: Duration = Duration::from_millis(500);

impl EngineHandle {
    pub fn submit(&self, request: EngineRequest) -> Result<(), SubmitError> {
        if self.failure.get().is_some() {
            return Err(SubmitError::Stopped);
        }
        self.limits.check(&request)?;
        let waiting = self.limits.reserve_waiting(&self.waiting, &self.metrics)?;
        match self.sender.try_send(Command::Submit(request)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(SubmitError::Overloaded(waiting))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(SubmitError::Stopped)
            }
        }
    }

    /// The model's context length (what the API validates against).
    pub fn max_position_embeddings(&self) -> usize {
        self.limits.max_position_embeddings
    }

    pub fn max_sequence_tokens(&self) -> usize {
        self.limits.max_sequence_tokens
    }

    /// The cell `failure` reads, for a watcher that must not keep the engine alive (a handle
    /// does: the engine thread runs while any handle exists).
    pub fn failure_cell(&self) -> Arc<OnceLock<String>> {
        self.failure.clone()
    }

    /// How long ago the engine loop last went round (see `Heartbeat`).
    pub fn heartbeat_age(&self) -> Duration {
        self.heartbeat.age()
    }

    /// Why the engine stopped (a fatal step failure or a panic); None while it runs.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    pub fn waiting_requests(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Asks the engine thread for its state; answered between two steps. Blocks the calling
    /// OS thread, so it is for tests and tools, not for a may coroutine.
    pub fn snapshot(&self) -> Result<EngineSnapshot, SubmitError> {
        let (reply, answer) = mpsc::channel();
        self.sender.send(Command::Snapshot(reply)).map_err(|_| SubmitError::Stopped)?;
        answer.recv().map_err(|_| SubmitError::Stopped)
    }
}

/// Starts the engine thread; it runs until every handle is dropped and the work is done.
pub fn start_engine(
    backend: Box<dyn Backend>,
    text: Arc<dyn TokenText>,
    config: EngineConfig,
) -> (EngineHandle, std::thread::JoinHandle<()>) {
    let engine = Engine::new(backend, text, config);
    // Room for every waiting request plus a few control messages.
    let (sender, receiver) = mpsc::sync_channel(config.max_waiting.max(1) + 16);
    let handle = EngineHandle {
        sender,
        waiting: engine.waiting_counter(),
        limits: *engine.limits(),
        failure: Arc::new(OnceLock::new()),
        heartbeat: Arc::new(Heartbeat { started: Instant::now(), last_ms: AtomicU64::new(0) }),
        metrics: engine.metrics().clone(),
    };
    let (failure, waiting, heartbeat) = (handle.failure.clone(), handle.waiting.clone(), handle.heartbeat.clone());
    let thread = std::thread::Builder::new()
        .name("kiln-engine".into())
        .spawn(move || run(engine, receiver, failure, waiting, heartbeat))
        .expect("spawning the engine thread");
    (handle, thread)
}

fn run(
    mut engine: Engine,
    receiver: Receiver<Command>,
    failure: Arc<OnceLock<String>>,
    waiting: Arc<AtomicUsize>,
    heartbeat: Arc<Heartbeat>,
) {
    loop {
        heartbeat.beat();
        if engine.is_idle() {
            // Nothing to compute: sleep until a request arrives or every handle is gone, waking
            // to beat.
            match receiver.recv_timeout(HEARTBEAT_PERIOD) {
                Ok(command) => handle(&mut engine, command),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        while let Ok(command) = receiver.try_recv() {
            handle(&mut engine, command);
        }
        let message = match std::panic::catch_unwind(AssertUnwindSafe(|| engine.step())) {
            Ok(Ok(())) => continue,
            // The engine has already failed the requests it held.
            Ok(Err(failed)) => failed.message,
            Err(panic) => {
                let message = format!("the engine panicked: {}", panic_text(panic.as_ref()));
                // Best effort: after a panic the engine's own state may be what is broken.
                let failed_all = std::panic::catch_unwind(AssertUnwindSafe(|| engine.fail_all(&message)));
                if failed_all.is_err() {
                    tracing::error!("failing the engine's requests panicked too; their clients see the channel close");
                }
                message
            }
        };
        tracing::error!("{message}; the engine stops and new requests are refused");
        let _ = failure.set(message.clone());
        fail_queued(&receiver, &message, &waiting);
        return;
    }
}

/// Answers every request still in the channel with the failure, so that no client waits for an
/// engine that will not run it. (One sent after this, before the channel closes, sees its event
/// channel close, which the server also reports as an error.)
fn fail_queued(receiver: &Receiver<Command>, message: &str, waiting: &AtomicUsize) {
    while let Ok(command) = receiver.try_recv() {
        match command {
            Command::Submit(mut request) => {
                waiting.fetch_sub(1, Ordering::SeqCst);
                request.sink.send(EngineEvent::Error { message: message.to_string() });
            }
            Command::Snapshot(_) => {}
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn handle(engine: &mut Engine, command: Command) {
    match command {
        Command::Submit(request) => engine.admit(request),
        Command::Snapshot(reply) => {
            let _ = reply.send(engine.snapshot());
        }
    }
}
