//! `kiln generate`: continue a prompt, or answer one chat message, printing only the generated
//! text to stdout as it is produced.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::load::{load_model, BackendChoice, LoadLimits};
use crate::engine::generate::{GenerationRequest, Generator};
use crate::engine::sampler::SamplingParams;
use crate::tokenizer::chat::ChatMessage;

pub struct GenerateArgs {
    pub model: Option<PathBuf>,
    pub prompt: String,
    pub chat: bool,
    pub system: Option<String>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub backend: BackendChoice,
    pub original_weights: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let limits = LoadLimits { kv_memory_bytes: Some(512 << 20), max_batch_tokens: 512, max_seqs: 1 };
    let loaded = load_model(args.model.as_deref(), limits, args.backend, args.original_weights)?;
    let tokenizer = &loaded.tokenizer;
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
    let config = loaded.config.clone();
    let room = config.max_position_embeddings.saturating_sub(prompt_ids.len());
    let request = GenerationRequest {
        max_new_tokens: args.max_tokens.min(room),
        prompt_ids,
        sampling: args.sampling,
        stop_token_ids: stop_ids(&config.eos_token_ids, tokenizer.eos_token_id()),
    };
    tracing::debug!("prompt is {} tokens", request.prompt_ids.len());
    // A chat answer starts a new text; a raw prompt is continued, so its leading space stays.
    let mut decoder = if args.chat {
        tokenizer.incremental_decoder()
    } else {
        crate::tokenizer::detok::IncrementalDecoder::continuing(tokenizer)
    };
    let mut generator = Generator::new(loaded.backend, loaded.plan_limits);
    let mut stdout = std::io::stdout().lock();
    let started = std::time::Instant::now();
    let mut write_error = None;
    let outputs = generator.generate(std::slice::from_ref(&request), |_, token| {
        if write_error.is_none() {
            if let Err(e) = stdout.write_all(decoder.push(token).as_bytes()).and_then(|_| stdout.flush()) {
                write_error = Some(e);
            }
        }
    })?;
    stdout.write_all(decoder.finish().as_bytes())?;
    writeln!(stdout)?;
    if let Some(e) = write_error {
        return Err(e).context("writing to stdout");
    }
    let generated = outputs[0].token_ids.len();
    tracing::info!(
        "{generated} tokens in {:.2}s ({:.1} tokens/s), finish reason {:?}",
        started.elapsed().as_secs_f64(),
        generated as f64 / started.elapsed().as_secs_f64(),
        outputs[0].finish_reason
    );
    Ok(())
}

/// Every id that ends generation: the config's EOS ids and the tokenizer's EOS token.
pub fn stop_ids(config_eos: &[u32], tokenizer_eos: Option<u32>) -> Vec<u32> {
    let mut ids = config_eos.to_vec();
    if let Some(id) = tokenizer_eos.filter(|id| !ids.contains(id)) {
        ids.push(id);
    }
    ids
}
