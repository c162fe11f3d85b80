//! The engine: owns the backend and serves every submitted request together, one `step()` at a
//! time. Requests join between steps (continuous batching); each step's tokens are sampled, on the
//! host from the logits or by a backend that samples on its device, and go through the
//! sequence's detokenizer and stop strings and out to the request's event sink. The server runs
//! `step()` in a loop on its own thread (`serving.rs`); `kiln generate`, the benchmarks and the
//! tests call it directly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::backend::sampling::{self as backend_sampling, HistoryEntry, RowSampling, SampledRows, MAX_LOGIT_BIAS};
use crate::backend::{Backend, BackendError};
use crate::ops::logits::log_softmax;

use super::kv_blocks::KvBlockAllocator;
use super::metrics::EngineMetrics;
use super::request::{EngineEvent, EngineRequest, FinishReason, TokenConstraint, TokenLogprob};
use super::sampler::Sampler;
use super::scheduler::{Scheduled, Scheduler, SchedulerConfig, SeqId};
use super::stop::StopMatcher;
use super::text::{StreamDecoder, TokenText};
use crate::backend::plan::{PlanLimits, StepPlan};

#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub max_batch_tokens: usize,
    pub max_seqs: usize,
    pub max_prefill_chunk: usize,
    /// Requests allowed to wait for a place in the batch; beyond it, submit says `Overloaded`.
    pub max_waiting: usize,
    /// Reuse the KV blocks of repeated prompt prefixes.
    pub prefix_caching: bool,
    /// Sample every token on the host from logits read back, even when the backend samples on
    /// its device (`Backend::samples_on_device`, the CUDA backend). For tests that compare the
    /// two paths and for debugging a device sampler; false (the normal setting) lets the device
    /// sample whenever it can.
    pub host_sampling: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the server is overloaded: {0} requests are already waiting; retry later")]
    Overloaded(usize),
    #[error("prompt ({prompt} tokens) plus max_new_tokens ({new}) exceeds the context length of {context} tokens")]
    ContextLengthExceeded { prompt: usize, new: usize, context: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("n = {n} completions exceed the {max} sequences a step can hold")]
    TooManyChoices { n: usize, max: usize },
    #[error("logit_bias: {0}")]
    LogitBias(String),
    #[error("the engine has stopped")]
    Stopped,
}

/// The engine's state between two steps, as seen from its own thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSnapshot {
    pub running_sequences: usize,
    pub waiting_sequences: usize,
    pub active_requests: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_total: usize,
}

/// The engine cannot go on: its backend failed in a way that makes further steps untrustworthy.
/// Every request it held has been failed with an `EngineEvent::Error`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("the engine failed: {message}")]
pub struct EngineFailed {
    pub message: String,
}

/// A test-only fault, from `KILN_TEST_FAULT=step-error:N`, `step-panic:N` or `step-stall:N`: the
/// N-th step that computes something fails as a broken device would, panics, or stalls for
/// `STALL` before going on. For the tests that prove a dead or hung engine is never hidden
/// (tests/engine_failure.rs); unset in every real deployment.
// The variants name what happens at a step, so they all begin with it.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    StepError { at_step: u64 },
    StepPanic { at_step: u64 },
    StepStall { at_step: u64 },
}

impl Fault {
    /// How long `step-stall` holds its step: longer than the liveness tests' stall limit.
    const STALL: std::time::Duration = std::time::Duration::from_secs(4);
}

impl Fault {
    fn from_env() -> Option<Fault> {
        let value = std::env::var("KILN_TEST_FAULT").ok()?;
        let (kind, at) = value.split_once(':').unwrap_or((value.as_str(), "1"));
        let at_step = at.parse().ok().filter(|&n| n > 0).unwrap_or(1);
        let fault = match kind {
            "step-error" => Fault::StepError { at_step },
            "step-panic" => Fault::StepPanic { at_step },
            "step-stall" => Fault::StepStall { at_step },
            _ => {
                tracing::warn!("KILN_TEST_FAULT={value} is not step-error, step-panic or step-stall[:N]; ignored");
                return None;
            }
        };
        tracing::warn!("test fault injected: {fault:?} (KILN_TEST_FAULT)");
        Some(fault)
    }
}

/// What every request is checked against before it is accepted, wherever it is submitted.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    pub max_waiting: usize,
    /// Longest sequence that can ever run: the context, and no more than the KV cache holds.
    pub max_sequence_tokens: usize,
    /// The model's context length (what the API validates against).
    pub max_position_embeddings: usize,
    pub max_seqs: usize,
    /// Logits per row: every token id a request names must be below it.
    pub vocab: usize,
}

impl EngineLimits {
    /// The request's own problems (not the engine's load).
    pub fn check(&self, request: &EngineRequest) -> Result<(), SubmitError> {
        let prompt = request.prompt_ids.len();
        let new = request.params.max_new_tokens;
        if prompt == 0 {
            return Err(SubmitError::EmptyPrompt);
        }
        if prompt + new > self.max_sequence_tokens {
            return Err(SubmitError::ContextLengthExceeded { prompt, new, context: self.max_sequence_tokens });
        }
        if request.params.n > self.max_seqs {
            return Err(SubmitError::TooManyChoices { n: request.params.n, max: self.max_seqs });
        }
        // A device sizes its per-row entries for this many biased tokens, and indexes logits by them.
        let bias = &request.params.sampling.logit_bias;
        if bias.len() > MAX_LOGIT_BIAS {
            return Err(SubmitError::LogitBias(format!("{} entries, at most {MAX_LOGIT_BIAS}", bias.len())));
        }
        if let Some(&(token, _)) = bias.iter().find(|&&(token, _)| token as usize >= self.vocab) {
            return Err(SubmitError::LogitBias(format!(
                "token {token} is outside the vocabulary of {} tokens",
                self.vocab
            )));
        }
        Ok(())
    }

    /// Counts one more waiting request, or refuses it when `max_waiting` are already waiting.
    pub(crate) fn reserve_waiting(&self, waiting: &AtomicUsize, metrics: &EngineMetrics) -> Result<usize, SubmitError> {
        let before = waiting.fetch_add(1, Ordering::SeqCst);
        if before >= self.max_waiting {
            waiting.fetch_sub(1, Ordering::SeqCst);
            EngineMetrics::add(&metrics.requests_rejected, 1);
            return Err(SubmitError::Overloaded(before));
        }
        Ok(before)
    }
}

type RequestId = u64;

struct RequestState {
    request: EngineRequest,
    submitted: Instant,
    started: bool,
    open_choices: usize,
    /// Prompt tokens the prefix cache held when the request started (reported when it ends).
    cached_prompt_tokens: usize,
}

struct SequenceState {
    request: RequestId,
    choice: usize,
    sampler: Sampler,
    decoder: Box<dyn StreamDecoder>,
    stop: StopMatcher,
    constraint: Option<Box<dyn TokenConstraint>>,
    generated: usize,
    last_token_at: Option<Instant>,
}

pub struct Engine {
    backend: Box<dyn Backend>,
    text: Arc<dyn TokenText>,
    scheduler: Scheduler,
    plan: StepPlan,
    scheduled: Vec<Scheduled>,
    logits: Vec<f32>,
    logprobs: Vec<f32>,
    /// (token, log-probability) scratch for picking the top ones, kept between tokens.
    ranked: Vec<(u32, f32)>,
    vocab: usize,
    requests: HashMap<RequestId, RequestState>,
    sequences: HashMap<SeqId, SequenceState>,
    /// Choices still to fork from their first sibling once its prompt is computed.
    pending_forks: HashMap<SeqId, Vec<SeqId>>,
    fork_row: Vec<f32>,
    /// The backend samples on its device and `host_sampling` is off.
    device_sampling: bool,
    /// A device-sampled step's rows (plan order), their history entries and mask rows, and what
    /// the device chose; kept between steps.
    sample_rows: Vec<RowSampling>,
    sample_history: Vec<HistoryEntry>,
    sample_masks: Vec<u32>,
    sampled: SampledRows,
    /// The allowed-token mask of a constrained sequence sampled on the host; kept between steps.
    host_mask: Vec<u32>,
    next_id: u64,
    waiting: Arc<AtomicUsize>,
    limits: EngineLimits,
    metrics: Arc<EngineMetrics>,
    /// Steps that computed something, for `fault`.
    computed_steps: u64,
    fault: Option<Fault>,
}

impl Engine {
    pub fn new(backend: Box<dyn Backend>, text: Arc<dyn TokenText>, config: EngineConfig) -> Engine {
        let layout = backend.kv_layout();
        let model_config = backend.config().clone();
        let max_sequence_tokens = model_config.max_position_embeddings.min(layout.capacity_tokens());
        let plan_limits = PlanLimits {
            max_batch_tokens: config.max_batch_tokens,
            max_seqs: config.max_seqs,
            max_blocks_per_seq: max_sequence_tokens.div_ceil(layout.block_size),
        };
        let metrics = Arc::new(EngineMetrics::default());
        EngineMetrics::set(&metrics.kv_blocks_total, layout.num_blocks as u64);
        let scheduler = Scheduler::new(
            SchedulerConfig {
                max_batch_tokens: config.max_batch_tokens,
                max_seqs: config.max_seqs,
                max_prefill_chunk: config.max_prefill_chunk,
            },
            {
                let blocks = KvBlockAllocator::new(layout.num_blocks, layout.block_size);
                if config.prefix_caching {
                    blocks
                } else {
                    blocks.without_prefix_caching()
                }
            },
        );
        let vocab = model_config.vocab_size;
        let device_sampling = backend.samples_on_device() && !config.host_sampling;
        tracing::info!(
            "engine: {} backend, sampling on the {}",
            backend.name(),
            if device_sampling { "device" } else { "host" }
        );
        Engine {
            backend,
            text,
            scheduler,
            plan: StepPlan::new(plan_limits, layout.block_size),
            scheduled: Vec::with_capacity(config.max_seqs),
            logits: vec![0.0; config.max_seqs * vocab],
            logprobs: vec![0.0; vocab],
            ranked: Vec::with_capacity(vocab),
            vocab,
            requests: HashMap::new(),
            sequences: HashMap::new(),
            pending_forks: HashMap::new(),
            fork_row: vec![0.0; vocab],
            device_sampling,
            sample_rows: Vec::with_capacity(config.max_seqs),
            sample_history: Vec::new(),
            sample_masks: Vec::with_capacity(config.max_seqs * backend_sampling::mask_words(vocab)),
            sampled: SampledRows::with_capacity(config.max_seqs),
            host_mask: vec![0; backend_sampling::mask_words(vocab)],
            next_id: 0,
            waiting: Arc::new(AtomicUsize::new(0)),
            limits: EngineLimits {
                max_waiting: config.max_waiting,
                max_sequence_tokens,
                max_position_embeddings: model_config.max_position_embeddings,
                max_seqs: config.max_seqs,
                vocab,
            },
            metrics,
            computed_steps: 0,
            fault: Fault::from_env(),
        }
    }

    pub fn limits(&self) -> &EngineLimits {
        &self.limits
    }

    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    /// Requests submitted and not started yet (shared with the server's handle).
    pub(crate) fn waiting_counter(&self) -> Arc<AtomicUsize> {
        self.waiting.clone()
    }

    /// Checks a request against the limits and queues it; its events go to its sink as the
    /// steps that compute it run.
    pub fn submit(&mut self, request: EngineRequest) -> Result<(), SubmitError> {
        self.limits.check(&request)?;
        self.limits.reserve_waiting(&self.waiting, &self.metrics)?;
        self.admit(request);
        Ok(())
    }

    /// Nothing submitted is left to compute.
    pub fn is_idle(&self) -> bool {
        self.scheduler.is_idle()
    }

    /// One step: cancels the requests whose client went away, runs the backend on what the
    /// scheduler chose, and emits each sampled token. A step failure that leaves the backend
    /// unusable fails every request and is returned; the engine must not be stepped again.
    pub fn step(&mut self) -> Result<(), EngineFailed> {
        self.cancel_abandoned();
        let result = self.run_step();
        self.publish_gauges();
        result
    }

    /// Steps until every submitted request has finished.
    pub fn run_until_idle(&mut self) -> Result<(), EngineFailed> {
        while !self.is_idle() {
            self.step()?;
        }
        Ok(())
    }

    /// Ends every request with an `EngineEvent::Error` carrying `message` and frees its
    /// sequences: what a failed engine owes the clients waiting on it.
    pub fn fail_all(&mut self, message: &str) {
        let requests: Vec<RequestId> = self.requests.keys().copied().collect();
        for request_id in requests {
            if let Some(state) = self.requests.get_mut(&request_id) {
                state.request.sink.send(EngineEvent::Error { message: message.to_string() });
            }
            self.cancel_request(request_id);
        }
    }

    pub fn snapshot(&self) -> EngineSnapshot {
        let blocks = self.scheduler.blocks();
        EngineSnapshot {
            running_sequences: self.scheduler.num_running(),
            waiting_sequences: self.scheduler.num_waiting(),
            active_requests: self.requests.len(),
            kv_blocks_used: blocks.blocks_used(),
            kv_blocks_total: blocks.num_blocks(),
        }
    }

    /// Queues a request already checked and counted as waiting (the server's handle does both).
    pub(crate) fn admit(&mut self, request: EngineRequest) {
        let request_id = self.next_id;
        self.next_id += 1;
        EngineMetrics::add(&self.metrics.requests_total, 1);
        EngineMetrics::add(&self.metrics.prompt_tokens_total, request.prompt_ids.len() as u64);
        let n = request.params.n.max(1);
        // Choice 0 prefills the prompt; the others are forked from it when its logits arrive and
        // share its KV blocks (copy-on-write), so the prompt is computed once.
        let first_id = self.next_id;
        for choice in 0..n {
            let id = self.next_id;
            self.next_id += 1;
            let mut sampling = request.params.sampling.clone();
            // Each choice draws its own stream, reproducibly from the request's seed.
            sampling.seed = sampling.seed.map(|s| s.wrapping_add(choice as u64));
            self.sequences.insert(
                id,
                SequenceState {
                    request: request_id,
                    choice,
                    sampler: Sampler::new(sampling, &request.prompt_ids),
                    decoder: self.text.stream_decoder(request.params.continues_prompt),
                    stop: StopMatcher::new(request.params.stop_strings.clone()),
                    constraint: request.params.constraint.as_ref().map(|make| make()),
                    generated: 0,
                    last_token_at: None,
                },
            );
        }
        self.scheduler.add(first_id, request.prompt_ids.clone());
        if n > 1 {
            self.pending_forks.insert(first_id, (first_id + 1..first_id + n as u64).collect());
        }
        self.requests.insert(
            request_id,
            RequestState {
                request,
                submitted: Instant::now(),
                started: false,
                open_choices: n,
                cached_prompt_tokens: 0,
            },
        );
    }

    /// Requests whose client has gone are finished before the next step computes anything.
    fn cancel_abandoned(&mut self) {
        let cancelled: Vec<RequestId> =
            self.requests.iter().filter(|(_, r)| r.request.cancel.load(Ordering::Relaxed)).map(|(&id, _)| id).collect();
        for id in cancelled {
            self.cancel_request(id);
        }
    }

    fn cancel_request(&mut self, request_id: RequestId) {
        let ids: Vec<SeqId> =
            self.sequences.iter().filter(|(_, s)| s.request == request_id).map(|(&id, _)| id).collect();
        for id in ids {
            self.finish(id, FinishReason::Cancelled);
        }
        EngineMetrics::add(&self.metrics.requests_cancelled, 1);
    }

    fn run_step(&mut self) -> Result<(), EngineFailed> {
        self.scheduler.schedule(&mut self.plan, &mut self.scheduled);
        if self.scheduled.is_empty() {
            return Ok(());
        }
        self.computed_steps += 1;
        for s in &self.scheduled {
            let request = self.sequences.get(&s.id).map(|seq| seq.request);
            if let Some(state) = request.and_then(|r| self.requests.get_mut(&r)) {
                if !state.started {
                    state.started = true;
                    // Its first scheduling: what is computed already came from the prefix cache.
                    state.cached_prompt_tokens = self.scheduler.computed_tokens(s.id);
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    self.metrics.queue_time.observe(state.submitted.elapsed().as_secs_f64());
                }
            }
        }
        let started = Instant::now();
        let on_device = self.device_sampling && self.prepare_device_rows();
        let injected = self.fault_due().and_then(|fault| self.inject(fault));
        let result = if let Some(injected) = injected {
            injected
        } else if on_device {
            self.backend.execute_and_sample(
                &self.plan,
                &self.sample_rows,
                &self.sample_history,
                &self.sample_masks,
                &mut self.sampled,
            )
        } else {
            self.backend.execute(&self.plan, &mut self.logits)
        };
        if let Err(error) = result {
            if error.is_fatal() {
                let message = format!("the forward step failed: {error}");
                tracing::error!("{message}; failing every request");
                self.fail_all(&message);
                return Err(EngineFailed { message });
            }
            self.fail_step(error);
            return Ok(());
        }
        self.metrics.step_time.observe(started.elapsed().as_secs_f64());
        EngineMetrics::add(&self.metrics.steps_total, 1);
        if on_device {
            EngineMetrics::add(&self.metrics.device_sampled_steps_total, 1);
        }
        EngineMetrics::set(&self.metrics.last_step_tokens, self.plan.num_tokens() as u64);
        self.scheduler.step_done(&self.scheduled);
        let scheduled = std::mem::take(&mut self.scheduled);
        for s in &scheduled {
            if let Some(row) = s.logits_row {
                if on_device {
                    self.emit_device_token(s.id, row);
                } else {
                    self.sample_and_emit(s.id, row);
                }
            }
        }
        self.scheduled = scheduled;
        Ok(())
    }

    fn fault_due(&self) -> Option<Fault> {
        self.fault.filter(|fault| match *fault {
            Fault::StepError { at_step } | Fault::StepPanic { at_step } | Fault::StepStall { at_step } => {
                at_step == self.computed_steps
            }
        })
    }

    /// Acts out a test fault: the step's result for an error or a panic, None once a stall has
    /// passed (the step then computes as usual).
    fn inject(&self, fault: Fault) -> Option<Result<(), BackendError>> {
        match fault {
            Fault::StepError { .. } => Some(Err(BackendError::Device {
                backend: self.backend.name(),
                message: "injected fault (KILN_TEST_FAULT=step-error)".into(),
            })),
            Fault::StepPanic { .. } => panic!("injected engine panic (KILN_TEST_FAULT=step-panic)"),
            Fault::StepStall { .. } => {
                std::thread::sleep(Fault::STALL);
                None
            }
        }
    }

    /// A backend failure fails the requests in this step; the engine keeps serving others.
    fn fail_step(&mut self, error: BackendError) {
        let message = format!("the forward step failed: {error}");
        let failed: Vec<RequestId> =
            self.scheduled.iter().filter_map(|s| self.sequences.get(&s.id).map(|q| q.request)).collect();
        for request_id in failed {
            if let Some(state) = self.requests.get_mut(&request_id) {
                state.request.sink.send(EngineEvent::Error { message: message.clone() });
            }
            self.cancel_request(request_id);
        }
    }

    /// Fills this step's device sampling rows from the sequences' samplers (which take their
    /// draws now, as they would on the host) and says whether the device can sample the step.
    /// It cannot when a sequence forks its choices from this step's row (each child samples
    /// its own first token from the same logits) or asks for more alternatives than a device
    /// row reports: those steps read the logits back.
    fn prepare_device_rows(&mut self) -> bool {
        let host_only = self.scheduled.iter().filter(|s| s.logits_row.is_some()).any(|s| {
            self.pending_forks.contains_key(&s.id)
                || self.sequences.get(&s.id).and_then(|q| self.requests.get(&q.request)).is_some_and(|state| {
                    state.request.params.top_logprobs.is_some_and(|k| k > backend_sampling::MAX_TOP_LOGPROBS)
                })
        });
        if host_only {
            return false;
        }
        let vocab = self.vocab;
        self.sample_rows.clear();
        self.sample_rows.resize(self.plan.num_logits(), RowSampling::greedy());
        self.sample_history.clear();
        self.sample_masks.clear();
        for s in &self.scheduled {
            let Some(row) = s.logits_row else { continue };
            let Some(seq) = self.sequences.get_mut(&s.id) else { continue };
            let Some(state) = self.requests.get(&seq.request) else { continue };
            let mut sampling = seq.sampler.device_row(&mut self.sample_history);
            if let Some(constraint) = seq.constraint.as_mut() {
                let started = Instant::now();
                sampling.mask_row = Some(backend_sampling::push_mask_words(&mut self.sample_masks, vocab, |words| {
                    constraint.allowed_tokens(words)
                }));
                self.metrics.constraint_mask_time.observe(started.elapsed().as_secs_f64());
            }
            if let Some(k) = state.request.params.top_logprobs {
                sampling.top_logprobs = k;
                sampling.want_logprob = true;
            }
            self.sample_rows[row] = sampling;
        }
        true
    }

    fn sample_and_emit(&mut self, id: SeqId, row: usize) {
        let vocab = self.vocab;
        if let Some(children) = self.pending_forks.remove(&id) {
            for child in children {
                // A child cancelled before the fork has no state left: nothing to start.
                if self.sequences.contains_key(&child) && self.scheduler.fork(id, child) {
                    self.fork_row.copy_from_slice(&self.logits[row * vocab..(row + 1) * vocab]);
                    self.emit_host_token(child, None);
                }
            }
        }
        self.emit_host_token(id, Some(row));
    }

    /// Samples a sequence's next token on the host from step row `row` (or, for a fork's first
    /// token, from `fork_row`), and emits it.
    fn emit_host_token(&mut self, id: SeqId, row: Option<usize>) {
        let vocab = self.vocab;
        let Some(seq) = self.sequences.get_mut(&id) else { return };
        let Some(state) = self.requests.get(&seq.request) else { return };
        let logits = match row {
            Some(row) => &mut self.logits[row * vocab..(row + 1) * vocab],
            None => &mut self.fork_row[..],
        };
        // Log-probabilities are the model's own, before penalties and temperature.
        let want_logprobs = state.request.params.top_logprobs;
        if want_logprobs.is_some() {
            log_softmax(logits, &mut self.logprobs);
        }
        let token = match seq.constraint.as_mut() {
            Some(constraint) => {
                let started = Instant::now();
                let mask = &mut self.host_mask;
                mask.fill(0);
                constraint.allowed_tokens(mask);
                self.metrics.constraint_mask_time.observe(started.elapsed().as_secs_f64());
                let allowed = |t: u32| mask.get(t as usize / 32).is_some_and(|word| word >> (t % 32) & 1 == 1);
                seq.sampler.sample(logits, Some(&allowed))
            }
            None => seq.sampler.sample(logits, None),
        };
        let logprob = want_logprobs.map(|k| top_logprobs(&self.logprobs, token, k, &mut self.ranked));
        self.emit_token(id, token, logprob);
    }

    /// Emits the token the device chose for a sequence from step row `row`.
    fn emit_device_token(&mut self, id: SeqId, row: usize) {
        let Some(seq) = self.sequences.get(&id) else { return };
        let Some(state) = self.requests.get(&seq.request) else { return };
        let token = self.sampled.token(row);
        let logprob = state.request.params.top_logprobs.map(|_| TokenLogprob {
            token_id: token,
            logprob: self.sampled.logprob(row).expect("a row that asks for log-probabilities gets one"),
            top: self.sampled.top(row).to_vec(),
        });
        self.emit_token(id, token, logprob);
    }

    /// Everything after the choice of a token, wherever it was sampled: stop tokens, the
    /// sampler's and constraint's state, metrics, the text it releases, the end of the sequence.
    fn emit_token(&mut self, id: SeqId, token: u32, logprob: Option<TokenLogprob>) {
        let Some(seq) = self.sequences.get_mut(&id) else { return };
        let Some(state) = self.requests.get_mut(&seq.request) else { return };
        let params = &state.request.params;
        let now = Instant::now();
        match seq.last_token_at {
            None => self.metrics.time_to_first_token.observe(state.submitted.elapsed().as_secs_f64()),
            Some(last) => self.metrics.inter_token_latency.observe((now - last).as_secs_f64()),
        }
        seq.last_token_at = Some(now);
        if params.stop_token_ids.contains(&token) && seq.constraint.is_none() {
            self.finish(id, FinishReason::Stop);
            return;
        }
        if seq.constraint.as_mut().is_some_and(|constraint| !constraint.accept(token)) {
            // Only when the constraint allowed nothing (a state it cannot continue from): the
            // output would break its guarantee, so the request fails instead.
            let message = "structured output reached a state with no allowed token; this is a bug in kiln, \
                           please report the request's schema";
            tracing::error!("{message}");
            state.request.sink.send(EngineEvent::Error { message: message.to_string() });
            let request = seq.request;
            self.cancel_request(request);
            return;
        }
        seq.sampler.accept(token);
        seq.generated += 1;
        EngineMetrics::add(&self.metrics.generated_tokens_total, 1);
        let released = seq.stop.push(&seq.decoder.push(token));
        let alive = state.request.sink.send(EngineEvent::Token {
            choice: seq.choice,
            token_id: token,
            text: released.text,
            logprob,
        });
        let constraint_done = seq.constraint.as_ref().is_some_and(|c| c.is_complete());
        let length_done = seq.generated >= params.max_new_tokens;
        self.scheduler.append_token(id, token);
        if !alive {
            let request = seq.request;
            self.cancel_request(request);
        } else if released.stopped || constraint_done {
            self.finish(id, FinishReason::Stop);
        } else if length_done {
            self.finish(id, FinishReason::Length);
        }
    }

    /// Ends one sequence: flushes its held text, tells the client, frees its KV blocks.
    fn finish(&mut self, id: SeqId, reason: FinishReason) {
        self.scheduler.remove(id);
        self.pending_forks.remove(&id);
        let Some(mut seq) = self.sequences.remove(&id) else { return };
        let Some(state) = self.requests.get_mut(&seq.request) else { return };
        let text = if reason == FinishReason::Cancelled {
            String::new()
        } else {
            let tail = seq.decoder.finish();
            let released = seq.stop.push(&tail);
            if released.stopped {
                released.text
            } else {
                released.text + &seq.stop.finish()
            }
        };
        state.request.sink.send(EngineEvent::Finished {
            choice: seq.choice,
            reason,
            text,
            generated_tokens: seq.generated,
            cached_prompt_tokens: state.cached_prompt_tokens,
        });
        state.open_choices -= 1;
        if state.open_choices == 0 {
            let state = self.requests.remove(&seq.request).expect("state was just borrowed");
            if !state.started {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn publish_gauges(&self) {
        let m = &self.metrics;
        EngineMetrics::set(&m.queue_depth, self.waiting.load(Ordering::SeqCst) as u64);
        EngineMetrics::set(&m.running_sequences, self.scheduler.num_running() as u64);
        EngineMetrics::set(&m.kv_blocks_used, self.scheduler.blocks().blocks_used() as u64);
        EngineMetrics::set(&m.preemptions_total, self.scheduler.preemptions());
        EngineMetrics::set(&m.prefix_cache_hit_tokens_total, self.scheduler.cached_prompt_tokens());
    }
}

/// The chosen token's log-probability and the `k` best alternatives.
/// The chosen token's log-probability and the k most likely tokens' (`ranked` is scratch).
fn top_logprobs(logprobs: &[f32], token: u32, k: usize, ranked: &mut Vec<(u32, f32)>) -> TokenLogprob {
    let mut top: Vec<(u32, f32)> = Vec::new();
    if k > 0 {
        ranked.clear();
        ranked.extend(logprobs.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        let k = k.min(ranked.len());
        let by_logprob_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        ranked.select_nth_unstable_by(k - 1, by_logprob_desc);
        top.extend_from_slice(&ranked[..k]);
        top.sort_by(by_logprob_desc);
    }
    TokenLogprob { token_id: token, logprob: logprobs[token as usize], top }
}

#[cfg(test)]
mod tests {
    use super::top_logprobs;

    #[test]
    fn top_logprobs_are_the_k_best_in_order_ties_by_token_id() {
        let logprobs = [-3.0, -1.0, -2.0, -1.0, -5.0];
        let mut ranked = vec![(7, 7.0); 2]; // stale scratch from an earlier token
        let got = top_logprobs(&logprobs, 2, 3, &mut ranked);
        assert_eq!((got.token_id, got.logprob), (2, -2.0));
        assert_eq!(got.top, vec![(1, -1.0), (3, -1.0), (2, -2.0)]);
        assert_eq!(top_logprobs(&logprobs, 4, 9, &mut ranked).top.len(), 5, "k beyond the vocabulary");
        assert!(top_logprobs(&logprobs, 0, 0, &mut ranked).top.is_empty());
    }
}
