//! The model geometry, read once from a Hugging Face `config.json` (plus `generation_config.json`)
//! into one plain struct that everything else shares read-only.

use std::path::Path;

use serde::Deserialize;

use super::ModelError;

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (all frequencies scaled alike).
    Linear {
        factor: f32,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Mistral's attention window; `None` means full causal attention.
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    /// Every id that ends generation (config.json and generation_config.json merged).
    pub eos_token_ids: Vec<u32>,
}

/// An id or a list of ids, as Hugging Face writes `eos_token_id`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            OneOrMany::One(id) => vec![id],
            OneOrMany::Many(ids) => ids,
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawRopeScaling {
    #[serde(alias = "type")]
    rope_type: Option<String>,
    factor: Option<f32>,
    low_freq_factor: Option<f32>,
    high_freq_factor: Option<f32>,
    original_max_position_embeddings: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    rope_scaling: Option<RawRopeScaling>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    sliding_window: Option<usize>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
}

#[derive(Debug, Deserialize)]
struct RawGenerationConfig {
    eos_token_id: Option<OneOrMany>,
}

const SUPPORTED_ARCHITECTURES: [&str; 2] = ["LlamaForCausalLM", "MistralForCausalLM"];

impl ModelConfig {
    /// Reads `config.json` and, when present, `generation_config.json` from a model directory.
    pub fn from_dir(dir: &Path) -> Result<ModelConfig, ModelError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
        let mut config = ModelConfig::from_json(&text, &config_path)?;
        let generation_path = dir.join("generation_config.json");
        if generation_path.exists() {
            let text = std::fs::read_to_string(&generation_path).map_err(|e| ModelError::io(&generation_path, e))?;
            let raw: RawGenerationConfig = serde_json::from_str(&text)
                .map_err(|e| ModelError::invalid(&generation_path, format!("not a valid generation config: {e}")))?;
            for id in raw.eos_token_id.map(OneOrMany::into_vec).unwrap_or_default() {
                if !config.eos_token_ids.contains(&id) {
                    config.eos_token_ids.push(id);
                }
            }
        }
        Ok(config)
    }

    /// Parses the text of a `config.json`; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<ModelConfig, ModelError> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::invalid(path, format!("not a valid model config: {e}")))?;
        let architecture = raw
            .architectures
            .as_ref()
            .and_then(|a| a.first().cloned())
            .or_else(|| raw.model_type.clone())
            .unwrap_or_default();
        if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(ModelError::UnsupportedArchitecture { path: path.into(), architecture });
        }
        let invalid = |message: String| ModelError::invalid(path, message);
        let num_heads = raw.num_attention_heads;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(invalid(format!(
                "num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})"
            )));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if raw.hidden_size.is_multiple_of(num_heads) => raw.hidden_size / num_heads,
            None => {
                return Err(invalid(format!("hidden_size {} is not divisible by {num_heads} heads", raw.hidden_size)))
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(invalid(format!("head_dim must be even and positive, got {head_dim}")));
        }
        for (name, value) in [
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("vocab_size", raw.vocab_size),
        ] {
            if value == 0 {
                return Err(invalid(format!("{name} must be positive")));
            }
        }
        let rope_scaling = match raw.rope_scaling {
            None => RopeScaling::None,
            Some(s) => {
                let factor = s.factor.unwrap_or(1.0);
                match s.rope_type.as_deref() {
                    Some("linear") => RopeScaling::Linear { factor },
                    Some("llama3") => RopeScaling::Llama3 {
                        factor,
                        low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
                        high_freq_factor: s.high_freq_factor.unwrap_or(4.0),
                        original_max_position_embeddings: s.original_max_position_embeddings.unwrap_or(8192),
                    },
                    Some("default") | None => RopeScaling::None,
                    Some(other) => {
                        return Err(invalid(format!(
                            "rope_scaling type `{other}` is not supported (supported: linear, llama3)"
                        )))
                    }
                }
            }
        };
        Ok(ModelConfig {
            architecture,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: raw.vocab_size,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: raw.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            sliding_window: raw.sliding_window,
            bos_token_id: raw.bos_token_id,
            eos_token_ids: raw.eos_token_id.map(OneOrMany::into_vec).unwrap_or_default(),
        })
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Parameters in the weights (embedding counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let attention = self.hidden_size * (self.q_dim() + 2 * self.kv_dim()) + self.q_dim() * self.hidden_size;
        let mlp = 3 * self.hidden_size * self.intermediate_size;
        let per_layer = attention + mlp + 2 * self.hidden_size;
        let embeddings = self.vocab_size * self.hidden_size * if self.tie_word_embeddings { 1 } else { 2 };
        self.num_layers * per_layer + embeddings + self.hidden_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ModelConfig, ModelError> {
        ModelConfig::from_json(json, Path::new("config.json"))
    }

    const LLAMA2_7B: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":4096,"intermediate_size":11008,
        "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":32,"vocab_size":32000,
        "rms_norm_eps":1e-05,"max_position_embeddings":4096,"bos_token_id":1,"eos_token_id":2,"tie_word_embeddings":false}"#;

    #[test]
    fn llama2_geometry() {
        let c = parse(LLAMA2_7B).unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.rope_theta, 10_000.0);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        // Llama-2-7B has 6.74 B parameters.
        assert_eq!(c.num_parameters(), 6_738_415_616);
    }

    #[test]
    fn llama3_scaling_gqa_and_eos_list() {
        let c = parse(
            r#"{"architectures":["LlamaForCausalLM"],"hidden_size":2048,"intermediate_size":8192,
            "num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,"head_dim":64,"vocab_size":128256,
            "rope_theta":500000.0,"rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"},"eos_token_id":[128001,128008,128009],
            "tie_word_embeddings":true}"#,
        )
        .unwrap();
        assert_eq!(c.kv_dim(), 512);
        assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 32.0));
        assert!(c.tie_word_embeddings);
    }

    #[test]
    fn linear_scaling_and_mistral() {
        let c = parse(
            r#"{"architectures":["MistralForCausalLM"],"hidden_size":4096,"intermediate_size":14336,
            "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":32000,
            "sliding_window":4096,"rope_scaling":{"type":"linear","factor":2.0}}"#,
        )
        .unwrap();
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!(c.sliding_window, Some(4096));
    }

    #[test]
    fn rejects_unknown_architecture_and_bad_geometry() {
        let err = parse(
            r#"{"architectures":["GPT2LMHeadModel"],"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"vocab_size":10}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unsupported architecture `GPT2LMHeadModel`"), "{err}");
        let err = parse(
            r#"{"architectures":["LlamaForCausalLM"],"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2,"vocab_size":10}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("multiple of num_key_value_heads"), "{err}");
        let err = parse("{not json").unwrap_err();
        assert!(err.to_string().starts_with("config.json: not a valid model config"), "{err}");
    }
}
