//! Loads a Llama GGUF's weights directly, keeping them in their stored format: float tensors as
//! views into the memory-mapped file, Q8_0/Q4_0/Q4_1 regrouped into kiln's row layout (the same
//! number of bytes), Q4_K/Q6_K as ggml blocks. What lets `kiln` run the original quantized file
//! instead of its f16 conversion.
//!
//! Q and K projections are stored by llama.cpp's converter with each head's rows interleaved for
//! its RoPE; they are put back in Hugging Face order here (a row copy), as the conversion does.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;

use super::convert::{config_from_gguf, gguf_row_for_hf_row};
use super::gguf::{GgufFile, TensorInfo};
use super::safetensors_dir::SharedBytes;
use super::weights::{LayerWeights, LlamaWeights, WeightFormat, WeightMatrix};
use super::{ModelConfig, ModelError};

struct MappedFile(Mmap);

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The configuration and weights of the Llama model in the GGUF at `path`.
pub fn load_gguf_weights(path: &Path) -> Result<(ModelConfig, LlamaWeights), ModelError> {
    let gguf = GgufFile::open(path)?;
    let config = config_from_gguf(&gguf)?;
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: read-only map of a file kiln never writes, with the same contract as GgufFile::open.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let bytes: SharedBytes = Arc::new(MappedFile(map));
    let loader = Loader { gguf: &gguf, bytes, config: &config };
    let weights = loader.weights()?;
    Ok((config, weights))
}

struct Loader<'a> {
    gguf: &'a GgufFile,
    bytes: SharedBytes,
    config: &'a ModelConfig,
}

impl Loader<'_> {
    fn weights(&self) -> Result<LlamaWeights, ModelError> {
        let c = self.config;
        let h = c.hidden_size;
        let embed_tokens = self.matrix("token_embd.weight", c.vocab_size, h, None)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let name = |n: &str| format!("blk.{i}.{n}.weight");
            layers.push(LayerWeights {
                input_norm: self.vector(&name("attn_norm"), h)?,
                q_proj: self.matrix(&name("attn_q"), c.q_dim(), h, Some(c.head_dim))?,
                k_proj: self.matrix(&name("attn_k"), c.kv_dim(), h, Some(c.head_dim))?,
                v_proj: self.matrix(&name("attn_v"), c.kv_dim(), h, None)?,
                o_proj: self.matrix(&name("attn_output"), h, c.q_dim(), None)?,
                post_attention_norm: self.vector(&name("ffn_norm"), h)?,
                gate_proj: self.matrix(&name("ffn_gate"), c.intermediate_size, h, None)?,
                up_proj: self.matrix(&name("ffn_up"), c.intermediate_size, h, None)?,
                down_proj: self.matrix(&name("ffn_down"), h, c.intermediate_size, None)?,
            });
        }
        let final_norm = self.vector("output_norm.weight", h)?;
        let lm_head = if self.gguf.tensor("output.weight").is_some() {
            self.matrix("output.weight", c.vocab_size, h, None)?
        } else {
            embed_tokens.clone()
        };
        Ok(LlamaWeights { embed_tokens, layers, final_norm, lm_head })
    }

    /// The tensor `name`, checked to be a `[rows, cols]` matrix (GGUF dims `[cols, rows]`).
    fn tensor(&self, name: &str, rows: usize, cols: usize) -> Result<&TensorInfo, ModelError> {
        let info = self.gguf.require_tensor(name)?;
        let mut dims = info.dims.clone();
        // Some writers pad shapes with trailing 1s; they carry no meaning.
        while dims.len() > 2 && dims.last() == Some(&1) {
            dims.pop();
        }
        let expected = if rows == 1 { vec![cols] } else { vec![cols, rows] };
        if dims != expected && !(rows == 1 && dims == [cols, 1]) {
            return Err(ModelError::WrongShape { path: self.gguf.path().into(), name: name.into(), got: info.dims.clone(), expected });
        }
        Ok(info)
    }

    /// A matrix in its stored format. `unpermute_head_dim` is set for Q and K, whose rows come
    /// back to Hugging Face order.
    fn matrix(&self, name: &str, rows: usize, cols: usize, unpermute_head_dim: Option<usize>) -> Result<WeightMatrix, ModelError> {
        let info = self.tensor(name, rows, cols)?;
        let format = WeightFormat::from_ggml(info.ggml_type).ok_or_else(|| {
            ModelError::invalid(
                self.gguf.path(),
                format!(
                    "tensor `{name}` is {}; kiln computes on F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K and Q6_K",
                    info.ggml_type
                ),
            )
        })?;
        if !cols.is_multiple_of(format.block_values()) {
            return Err(ModelError::invalid(self.gguf.path(), format!("tensor `{name}`: rows are not whole blocks")));
        }
        let data = self.gguf.tensor_data(info);
        let row_bytes = info.row_bytes();
        let source_row = |r: usize| {
            let stored = match unpermute_head_dim {
                Some(head_dim) => gguf_row_for_hf_row(r, head_dim),
                None => r,
            };
            &data[stored * row_bytes..(stored + 1) * row_bytes]
        };
        let float = matches!(format, WeightFormat::F32 | WeightFormat::F16 | WeightFormat::Bf16);
        if float && unpermute_head_dim.is_none() {
            // Used in place: the pages of the map are the matrix.
            return Ok(WeightMatrix::from_shared(format, rows, cols, self.bytes.clone(), self.gguf.tensor_file_range(info)));
        }
        Ok(WeightMatrix::from_ggml_rows(format, rows, cols, source_row))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let info = self.tensor(name, 1, len)?;
        self.gguf.dequantize(info)
    }
}
