//! The engine loop with a tiny random-weight model: concurrent requests, cancellation, queue
//! overflow, stop strings and n > 1, with nothing leaking once the engine is idle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use kiln::backend::cpu::CpuBackend;
use kiln::backend::plan::PlanLimits;
use kiln::backend::sampling::MAX_LOGIT_BIAS;
use kiln::backend::KvLayout;
use kiln::engine::batch::run_batch;
use kiln::engine::core::{Engine, EngineConfig, SubmitError};
use kiln::engine::request::{EngineEvent, EngineRequest, EventSink, FinishReason, RequestParams};
use kiln::engine::sampler::SamplingParams;
use kiln::engine::serving::{start_engine, EngineHandle};
use kiln::engine::text::{StreamDecoder, TokenText};
use kiln::model::random::{random_llama_weights, tiny_test_config};
use kiln::model::safetensors_dir::WeightDtype;

/// Token t reads as one letter, so text is easy to predict from ids.
struct Letters;
struct LetterDecoder;
impl StreamDecoder for LetterDecoder {
    fn push(&mut self, token: u32) -> String {
        char::from(b'a' + (token % 26) as u8).to_string()
    }
    fn finish(&mut self) -> String {
        String::new()
    }
}
impl TokenText for Letters {
    fn stream_decoder(&self, _continues_prompt: bool) -> Box<dyn StreamDecoder> {
        Box::new(LetterDecoder)
    }
}

const LAYOUT: KvLayout = KvLayout { block_size: 4, num_blocks: 128 };

fn backend(layout: KvLayout) -> CpuBackend {
    let config = tiny_test_config();
    let weights = random_llama_weights(&config, 21, WeightDtype::F16);
    CpuBackend::new(config, weights, layout, PlanLimits { max_batch_tokens: 32, max_seqs: 8, max_blocks_per_seq: 128 })
}

fn config(max_waiting: usize) -> EngineConfig {
    EngineConfig {
        max_batch_tokens: 32,
        max_seqs: 8,
        max_prefill_chunk: 8,
        max_waiting,
        prefix_caching: true,
        host_sampling: false,
    }
}

fn engine(layout: KvLayout, max_waiting: usize) -> EngineHandle {
    start_engine(Box::new(backend(layout)), Arc::new(Letters), config(max_waiting)).0
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 13 + seed * 57 + 3) % 250).collect()
}

struct Collected {
    tokens: Vec<Vec<u32>>,
    text: Vec<String>,
    reasons: Vec<Option<FinishReason>>,
    /// Per choice, the prompt tokens its Finished event says came from the prefix cache.
    cached: Vec<usize>,
}

fn submit(
    engine: &EngineHandle,
    prompt_ids: Vec<u32>,
    params: RequestParams,
) -> (mpsc::Receiver<EngineEvent>, Arc<AtomicBool>) {
    let (sender, receiver) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    engine.submit(EngineRequest { prompt_ids, params, sink: Box::new(sender), cancel: cancel.clone() }).unwrap();
    (receiver, cancel)
}

fn collect(receiver: &mpsc::Receiver<EngineEvent>, n: usize) -> Collected {
    let mut c = Collected {
        tokens: vec![Vec::new(); n],
        text: vec![String::new(); n],
        reasons: vec![None; n],
        cached: vec![0; n],
    };
    while c.reasons.iter().any(Option::is_none) {
        match receiver.recv().expect("the engine finishes every choice") {
            EngineEvent::Token { choice, token_id, text, .. } => {
                c.tokens[choice].push(token_id);
                c.text[choice] += &text;
            }
            EngineEvent::Finished { choice, reason, text, cached_prompt_tokens, .. } => {
                c.text[choice] += &text;
                c.reasons[choice] = Some(reason);
                c.cached[choice] = cached_prompt_tokens;
            }
            EngineEvent::Error { message } => panic!("engine error: {message}"),
        }
    }
    c
}

fn assert_idle(engine: &EngineHandle) {
    let s = engine.snapshot().unwrap();
    assert_eq!((s.running_sequences, s.waiting_sequences, s.active_requests, s.kv_blocks_used), (0, 0, 0, 0), "{s:?}");
    assert_eq!(engine.waiting_requests(), 0);
}

#[test]
fn concurrent_requests_get_the_tokens_they_would_get_alone() {
    // Each prompt by itself on a fresh engine stepped on this thread.
    let reference = |p: &Vec<u32>| {
        let mut alone = Engine::new(Box::new(backend(LAYOUT)), Arc::new(Letters), config(64));
        run_batch(&mut alone, &[(p.clone(), RequestParams::greedy(10, vec![]))]).unwrap().remove(0).remove(0).token_ids
    };
    let engine = engine(LAYOUT, 64);
    let prompts: Vec<Vec<u32>> = (0..12).map(|i| prompt(i, 2 + 3 * i as usize)).collect();
    let receivers: Vec<_> =
        prompts.iter().map(|p| submit(&engine, p.clone(), RequestParams::greedy(10, vec![])).0).collect();
    for (p, receiver) in prompts.iter().zip(&receivers) {
        let got = collect(receiver, 1);
        assert_eq!(got.tokens[0], reference(p), "nobody gets another user's tokens");
        assert_eq!(got.reasons[0], Some(FinishReason::Length));
        let letters: String = got.tokens[0].iter().map(|&t| char::from(b'a' + (t % 26) as u8)).collect();
        assert_eq!(got.text[0], letters);
    }
    assert_idle(&engine);
}

#[test]
fn cancellation_and_a_vanished_client_free_their_blocks() {
    let engine = engine(LAYOUT, 64);
    let (receiver, cancel) = submit(&engine, prompt(1, 9), RequestParams::greedy(400, vec![]));
    // Wait for the first token, then cancel: the next event must be the cancellation.
    assert!(matches!(receiver.recv().unwrap(), EngineEvent::Token { .. }));
    cancel.store(true, Ordering::Relaxed);
    loop {
        match receiver.recv().unwrap() {
            EngineEvent::Token { .. } => continue, // at most the step already running
            EngineEvent::Finished { reason, .. } => {
                assert_eq!(reason, FinishReason::Cancelled);
                break;
            }
            EngineEvent::Error { message } => panic!("{message}"),
        }
    }
    assert_idle(&engine);

    // A sink that reports its receiver gone after three tokens.
    struct Vanishing(usize, mpsc::Sender<()>);
    impl EventSink for Vanishing {
        fn send(&mut self, _: EngineEvent) -> bool {
            self.0 += 1;
            if self.0 == 3 {
                let _ = self.1.send(());
            }
            self.0 < 3
        }
    }
    let (gone, gone_seen) = mpsc::channel();
    let request = EngineRequest {
        prompt_ids: prompt(2, 5),
        params: RequestParams::greedy(400, vec![]),
        sink: Box::new(Vanishing(0, gone)),
        cancel: Arc::new(AtomicBool::new(false)),
    };
    engine.submit(request).unwrap();
    gone_seen.recv().unwrap();
    assert_idle(&engine);
}

#[test]
fn queue_overflow_is_refused_and_context_is_checked() {
    let engine = engine(LAYOUT, 2);
    // A long request keeps the engine busy while the queue fills.
    let mut receivers = Vec::new();
    let mut refused = 0;
    for i in 0..12 {
        let (sender, receiver) = mpsc::channel();
        let request = EngineRequest {
            prompt_ids: prompt(i, 20),
            params: RequestParams::greedy(40, vec![]),
            sink: Box::new(sender),
            cancel: Arc::new(AtomicBool::new(false)),
        };
        match engine.submit(request) {
            Ok(()) => receivers.push(receiver),
            Err(SubmitError::Overloaded(_)) => refused += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert!(refused > 0, "12 requests at once cannot all fit a queue of 2");
    for receiver in &receivers {
        collect(receiver, 1);
    }
    assert_idle(&engine);
    let (sender, _receiver) = mpsc::channel();
    let err = engine
        .submit(EngineRequest {
            prompt_ids: vec![1; 500],
            params: RequestParams::greedy(100, vec![]),
            sink: Box::new(sender),
            cancel: Arc::new(AtomicBool::new(false)),
        })
        .unwrap_err();
    assert_eq!(err, SubmitError::ContextLengthExceeded { prompt: 500, new: 100, context: 512 });
}

#[test]
fn stop_strings_and_stop_tokens_end_the_text_without_appearing_in_it() {
    let engine = engine(LAYOUT, 64);
    let p = prompt(3, 6);
    let free = collect(&submit(&engine, p.clone(), RequestParams::greedy(12, vec![])).0, 1);
    let text = free.text[0].clone();
    // Stop at the 6th letter's text (first occurrence of that two-letter pair).
    let stop = text[5..7].to_string();
    let cut = text.find(&stop).unwrap();
    let params = RequestParams { stop_strings: vec![stop.clone()], ..RequestParams::greedy(12, vec![]) };
    let stopped = collect(&submit(&engine, p.clone(), params).0, 1);
    assert_eq!(stopped.text[0], text[..cut], "stop {stop:?} in {text:?}");
    assert_eq!(stopped.reasons[0], Some(FinishReason::Stop));
    // A stop token (like EOS) ends the sequence and is not emitted.
    let eos = free.tokens[0][4];
    let first = free.tokens[0].iter().position(|&t| t == eos).unwrap();
    let ended = collect(&submit(&engine, p, RequestParams::greedy(12, vec![eos])).0, 1);
    assert_eq!(ended.tokens[0], free.tokens[0][..first]);
    assert_eq!(ended.reasons[0], Some(FinishReason::Stop));
    assert_idle(&engine);
}

#[test]
fn n_choices_are_seeded_reproducibly() {
    let engine = engine(LAYOUT, 64);
    let params = RequestParams {
        n: 3,
        sampling: SamplingParams { temperature: 1.5, seed: Some(99), ..SamplingParams::greedy() },
        top_logprobs: Some(2),
        ..RequestParams::greedy(8, vec![])
    };
    let a = collect(&submit(&engine, prompt(4, 5), params.clone()).0, 3);
    let b = collect(&submit(&engine, prompt(4, 5), params).0, 3);
    assert_eq!(a.tokens, b.tokens, "same seed, same output");
    assert!(a.tokens[0] != a.tokens[1] || a.tokens[1] != a.tokens[2], "choices draw different streams");
    assert_idle(&engine);
}

#[test]
fn finished_events_report_the_prompt_tokens_the_prefix_cache_held() {
    let engine = engine(LAYOUT, 64);
    let p = prompt(8, 14);
    let first = collect(&submit(&engine, p.clone(), RequestParams::greedy(3, vec![])).0, 1);
    assert_eq!(first.cached, vec![0], "nothing was cached before the first request");
    // Blocks of 4: the first three full blocks are reused (the last prompt token is always
    // computed, for the logits); every choice reports the prompt's count.
    let again = RequestParams { n: 2, ..RequestParams::greedy(3, vec![]) };
    let second = collect(&submit(&engine, p.clone(), again).0, 2);
    assert_eq!(second.cached, vec![12, 12]);
    assert_eq!(second.tokens[0], first.tokens[0], "a cached prefix gives the same tokens");
    // A prompt that shares only its first block.
    let mut other = p[..5].to_vec();
    other.extend([200, 201, 202, 203, 204]);
    assert_eq!(collect(&submit(&engine, other, RequestParams::greedy(2, vec![])).0, 1).cached, vec![4]);
    assert_idle(&engine);
}

#[test]
fn logit_bias_steers_greedy_choices_and_is_checked_at_submit() {
    let engine = engine(LAYOUT, 64);
    let p = prompt(5, 7);
    let biased = |logit_bias: Vec<(u32, f32)>| RequestParams {
        sampling: SamplingParams { logit_bias, ..SamplingParams::greedy() },
        ..RequestParams::greedy(6, vec![])
    };
    let free = collect(&submit(&engine, p.clone(), biased(vec![])).0, 1).tokens.remove(0);
    let target = (free[0] + 1) % 250;
    let pushed = collect(&submit(&engine, p.clone(), biased(vec![(target, 100.0)])).0, 1).tokens.remove(0);
    assert_eq!(pushed, vec![target; 6], "+100 makes the token every greedy choice");
    let banned = collect(&submit(&engine, p.clone(), biased(vec![(free[0], -100.0)])).0, 1).tokens.remove(0);
    assert_ne!(banned[0], free[0], "-100 takes the greedy token out");
    assert!(!banned.contains(&free[0]));

    let vocab = tiny_test_config().vocab_size as u32;
    let refused = |logit_bias: Vec<(u32, f32)>| {
        let (sender, _receiver) = mpsc::channel();
        engine.submit(EngineRequest {
            prompt_ids: p.clone(),
            params: biased(logit_bias),
            sink: Box::new(sender),
            cancel: Arc::new(AtomicBool::new(false)),
        })
    };
    assert!(matches!(refused(vec![(vocab, 1.0)]), Err(SubmitError::LogitBias(_))), "a token outside the vocabulary");
    let too_many = (0..=MAX_LOGIT_BIAS as u32).map(|t| (t % vocab, 1.0)).collect();
    assert!(matches!(refused(too_many), Err(SubmitError::LogitBias(_))), "more entries than a device row holds");
    let last = collect(&submit(&engine, p, biased(vec![(vocab - 1, 100.0)])).0, 1).tokens.remove(0);
    assert_eq!(last, vec![vocab - 1; 6], "the last id of the vocabulary is accepted");
    assert_idle(&engine);
}
