//! A fixed set of requests run to the end on the calling thread: submit them all to an `Engine`,
//! step until it is idle, and gather each request's events into whole completions. For callers
//! that want results rather than a stream (tests, benchmarks); `kiln generate` steps the engine
//! itself to print as it goes.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::Arc;

use super::core::{Engine, EngineFailed, SubmitError};
use super::request::{EngineEvent, EngineRequest, FinishReason, RequestParams, TokenLogprob};

/// One finished choice of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub token_ids: Vec<u32>,
    /// The text the engine released (detokenized, stop strings removed).
    pub text: String,
    pub logprobs: Vec<Option<TokenLogprob>>,
    pub finish_reason: FinishReason,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BatchError {
    #[error("request {index} was refused: {error}")]
    Refused { index: usize, error: SubmitError },
    #[error("request {index} failed: {message}")]
    Failed { index: usize, message: String },
    #[error("{0}")]
    EngineFailed(#[from] EngineFailed),
}

/// Runs `requests` (prompt ids, parameters) together and returns each one's choices in order.
/// A refused request refuses the batch before anything runs.
pub fn run_batch(
    engine: &mut Engine,
    requests: &[(Vec<u32>, RequestParams)],
) -> Result<Vec<Vec<Completion>>, BatchError> {
    for (index, (prompt_ids, params)) in requests.iter().enumerate() {
        let probe = request(prompt_ids, params, Box::new(mpsc::channel().0));
        engine.limits().check(&probe).map_err(|error| BatchError::Refused { index, error })?;
    }
    let mut receivers = Vec::with_capacity(requests.len());
    for (index, (prompt_ids, params)) in requests.iter().enumerate() {
        let (sender, receiver) = mpsc::channel();
        engine
            .submit(request(prompt_ids, params, Box::new(sender)))
            .map_err(|error| BatchError::Refused { index, error })?;
        receivers.push(receiver);
    }
    engine.run_until_idle().map_err(BatchError::EngineFailed)?;
    receivers
        .iter()
        .zip(requests)
        .enumerate()
        .map(|(index, (receiver, (_, params)))| collect(index, receiver, params.n))
        .collect()
}

fn request(prompt_ids: &[u32], params: &RequestParams, sink: Box<dyn super::request::EventSink>) -> EngineRequest {
    EngineRequest {
        prompt_ids: prompt_ids.to_vec(),
        params: params.clone(),
        sink,
        cancel: Arc::new(AtomicBool::new(false)),
    }
}

fn collect(index: usize, receiver: &mpsc::Receiver<EngineEvent>, n: usize) -> Result<Vec<Completion>, BatchError> {
    let mut choices: Vec<(Completion, bool)> = (0..n.max(1))
        .map(|_| {
            let completion = Completion {
                token_ids: Vec::new(),
                text: String::new(),
                logprobs: Vec::new(),
                finish_reason: FinishReason::Cancelled,
            };
            (completion, false)
        })
        .collect();
    for event in receiver.try_iter() {
        match event {
            EngineEvent::Token { choice, token_id, text, logprob } => {
                let c = &mut choices[choice].0;
                c.token_ids.push(token_id);
                c.text.push_str(&text);
                c.logprobs.push(logprob);
            }
            EngineEvent::Finished { choice, reason, text, .. } => {
                choices[choice].0.text.push_str(&text);
                choices[choice].0.finish_reason = reason;
                choices[choice].1 = true;
            }
            EngineEvent::Error { message } => return Err(BatchError::Failed { index, message }),
        }
    }
    if let Some(open) = choices.iter().position(|(_, finished)| !finished) {
        let message = format!("choice {open} never finished although the engine is idle");
        return Err(BatchError::Failed { index, message });
    }
    Ok(choices.into_iter().map(|(completion, _)| completion).collect())
}
