//! The engine on its own thread, for the server: requests arrive over a channel from any number
//! of handles and join between steps; the thread sleeps while nothing is left to compute.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use crate::backend::Backend;

use super::core::{Engine, EngineConfig, EngineLimits, EngineSnapshot, SubmitError};
use super::metrics::EngineMetrics;
use super::request::EngineRequest;
use super::text::TokenText;

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
    pub metrics: Arc<EngineMetrics>,
}

impl EngineHandle {
    pub fn submit(&self, request: EngineRequest) -> Result<(), SubmitError> {
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
        metrics: engine.metrics().clone(),
    };
    let thread = std::thread::Builder::new()
        .name("kiln-engine".into())
        .spawn(move || run(engine, receiver))
        .expect("spawning the engine thread");
    (handle, thread)
}

fn run(mut engine: Engine, receiver: Receiver<Command>) {
    loop {
        if engine.is_idle() {
            // Nothing to compute: sleep until a request arrives or every handle is gone.
            match receiver.recv() {
                Ok(command) => handle(&mut engine, command),
                Err(_) => return,
            }
        }
        while let Ok(command) = receiver.try_recv() {
            handle(&mut engine, command);
        }
        engine.step();
    }
}

fn handle(engine: &mut Engine, command: Command) {
    match command {
        Command::Submit(request) => engine.admit(request),
        Command::Snapshot(reply) => {
            let _ = reply.send(engine.snapshot());
        }
    }
}
