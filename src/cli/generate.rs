//! `kiln generate`: continue a prompt, or answer one chat message, printing only the generated
//! text to stdout as it is produced.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};

use anyhow::Context;

use super::load::{load_model, BackendChoice, LoadLimits};
use super::serve::ServeArgs;
use crate::engine::core::{Engine, EngineConfig};
use crate::engine::request::{EngineEvent, EngineRequest, RequestParams};
use crate::engine::sampler::SamplingParams;
use crate::tokenizer::chat::ChatMessage;

pub struct GenerateArgs {
    pub model: Option<PathBuf>,
    pub prompt: String,
    pub chat: bool,
    pub system: Option<String>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Text that ends the answer (not printed), as the API's `stop`.
    pub stop: Vec<String>,
    pub backend: BackendChoice,
    pub original_weights: bool,
    pub tensor_parallel: usize,
}

/// Runs the serving engine on this thread with one request: the same limits, KV policy, chunked
/// prefill, stop handling and detokenizer as `kiln serve`, printing text as the engine releases it.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let serve = ServeArgs::default();
    let limits = LoadLimits {
        kv_memory_bytes: serve.kv_memory_bytes,
        max_batch_tokens: serve.max_batch_tokens,
        max_seqs: 1,
        tensor_parallel: args.tensor_parallel,
    };
    let loaded = load_model(args.model.as_deref(), limits, args.backend, args.original_weights)?;
    let tokenizer = Arc::new(loaded.tokenizer);
    let prompt_ids = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system.as_str()));
        }
        messages.push(ChatMessage::new("user", args.prompt.as_str()));
        tokenizer.encode_chat(&messages, true).context("rendering the chat template")?
    } else {
        tokenizer.encode(&args.prompt, true).context("tokenizing the prompt")?
    };
    tracing::debug!("prompt is {} tokens", prompt_ids.len());
    // The server's engine, for one request.
    let engine_config = EngineConfig { max_seqs: 1, max_waiting: 1, prefix_caching: false, ..serve.engine_config() };
    let mut engine = Engine::new(loaded.backend, tokenizer.clone(), engine_config);
    // As many new tokens as asked for and the context (and KV cache) has room for.
    let room = engine.limits().max_sequence_tokens.saturating_sub(prompt_ids.len());
    let params = RequestParams {
        max_new_tokens: args.max_tokens.min(room),
        sampling: args.sampling,
        stop_strings: args.stop,
        stop_token_ids: stop_ids(&loaded.config.eos_token_ids, tokenizer.eos_token_id()),
        // A chat answer starts a new text; a raw prompt is continued, so its leading space stays.
        continues_prompt: !args.chat,
        ..RequestParams::greedy(0, Vec::new())
    };
    let (sender, events) = mpsc::channel();
    let request =
        EngineRequest { prompt_ids, params, sink: Box::new(sender), cancel: Arc::new(AtomicBool::new(false)) };
    engine.submit(request).context("the prompt does not fit")?;
    let mut stdout = std::io::stdout().lock();
    let started = std::time::Instant::now();
    loop {
        engine.step()?;
        for event in events.try_iter() {
            match event {
                EngineEvent::Token { text, .. } => {
                    stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush()).context("writing to stdout")?;
                }
                EngineEvent::Finished { text, reason, generated_tokens, .. } => {
                    stdout.write_all(text.as_bytes()).context("writing to stdout")?;
                    writeln!(stdout).context("writing to stdout")?;
                    let seconds = started.elapsed().as_secs_f64();
                    tracing::info!(
                        "{generated_tokens} tokens in {seconds:.2}s ({:.1} tokens/s), finish reason {reason:?}",
                        generated_tokens as f64 / seconds
                    );
                    return Ok(());
                }
                EngineEvent::Error { message } => anyhow::bail!("{message}"),
            }
        }
        if engine.is_idle() {
            anyhow::bail!("the engine finished without ending the request");
        }
    }
}

/// Every id that ends generation: the config's EOS ids and the tokenizer's EOS token.
pub fn stop_ids(config_eos: &[u32], tokenizer_eos: Option<u32>) -> Vec<u32> {
    let mut ids = config_eos.to_vec();
    if let Some(id) = tokenizer_eos.filter(|id| !ids.contains(id)) {
        ids.push(id);
    }
    ids
}
