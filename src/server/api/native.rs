//! The native inference API (`POST /v1/inference/{model}`), with the hosted service's field
//! names, defaults and ranges.

use super::error::ApiError;
use super::fields::Fields;
use super::limits::{MAX_NATIVE_NEW_TOKENS, MAX_NATIVE_RESPONSES, MAX_STOP_SEQUENCES};
use super::valid::{PromptInput, ValidGeneration};
use crate::engine::sampler::SamplingParams;

pub struct NativeRequest {
    pub generation: ValidGeneration,
    /// Where to POST the result; the reply to the request itself is then only "queued".
    pub webhook: Option<String>,
}

pub fn parse_native(body: &[u8]) -> Result<NativeRequest, ApiError> {
    let f = Fields::parse(body)?;
    let input = f.string("input")?.ok_or_else(|| ApiError::invalid_param("input", "`input` is required."))?;
    let stream = f.bool("stream")?.unwrap_or(false);
    let n = f.u64_in("num_responses", 1, MAX_NATIVE_RESPONSES)?.unwrap_or(1) as usize;
    if stream && n > 1 {
        return Err(ApiError::invalid_param("num_responses", "`num_responses` greater than 1 cannot be streamed."));
    }
    let top_p = f.positive_f32("top_p", 1.0)?.unwrap_or(0.9);
    let webhook = f.string("webhook")?;
    if stream && webhook.is_some() {
        return Err(ApiError::invalid_param("webhook", "`webhook` cannot be combined with `stream`."));
    }
    let sampling = SamplingParams {
        temperature: f.f32_in("temperature", 0.0, 100.0)?.unwrap_or(0.7),
        top_p,
        top_k: f.u64_in("top_k", 0, 100_000)?.unwrap_or(0) as usize,
        min_p: 0.0,
        repetition_penalty: f.f32_in("repetition_penalty", 0.01, 5.0)?.unwrap_or(1.0),
        presence_penalty: f.f32_in("presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        frequency_penalty: f.f32_in("frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        seed: f.seed("seed")?,
        logit_bias: Vec::new(),
    };
    Ok(NativeRequest {
        generation: ValidGeneration {
            model: None,
            prompt: PromptInput::Text(vec![input]),
            prompt_field: "input",
            max_tokens: Some(f.u64_in("max_new_tokens", 1, MAX_NATIVE_NEW_TOKENS)?.unwrap_or(512) as usize),
            max_tokens_field: "max_new_tokens",
            cap_max_tokens_to_context: true,
            sampling,
            stop: f.stop("stop", MAX_STOP_SEQUENCES)?,
            n,
            stream,
            include_usage: false,
            logprobs: None,
            echo: false,
            response_format: f.response_format("response_format")?,
            ignore_eos: false,
            tools: None,
        },
        webhook,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_hosted_service() {
        let r = parse_native(br#"{"input":"Hello"}"#).unwrap();
        let g = r.generation;
        assert_eq!((g.max_tokens, g.n, g.stream), (Some(512), 1, false));
        assert_eq!((g.sampling.temperature, g.sampling.top_p, g.sampling.top_k), (0.7, 0.9, 0));
        assert!(g.cap_max_tokens_to_context);
    }

    #[test]
    fn ranges() {
        for (body, param) in [
            (r#"{}"#, "input"),
            (r#"{"input":"x","max_new_tokens":0}"#, "max_new_tokens"),
            (r#"{"input":"x","max_new_tokens":100001}"#, "max_new_tokens"),
            (r#"{"input":"x","temperature":101}"#, "temperature"),
            (r#"{"input":"x","top_p":0}"#, "top_p"),
            (r#"{"input":"x","repetition_penalty":0}"#, "repetition_penalty"),
            (r#"{"input":"x","num_responses":3}"#, "num_responses"),
            (r#"{"input":"x","num_responses":2,"stream":true}"#, "num_responses"),
            (r#"{"input":"x","frequency_penalty":2.5}"#, "frequency_penalty"),
        ] {
            let err = parse_native(body.as_bytes()).err().unwrap();
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
        }
        assert_eq!(parse_native(br#"{"input":"x","temperature":50}"#).unwrap().generation.sampling.temperature, 50.0);
    }
}
