//! The Llama weights as typed views over the model files: matrices stay in their stored dtype
//! (f32, f16 or bf16, memory-mapped), norms are copied to f32 since they are tiny.

use std::path::Path;
use std::sync::Arc;

use half::{bf16, f16};

use super::safetensors_dir::{SafetensorsDir, SharedBytes, WeightDtype};
use super::{ModelConfig, ModelError};

/// A row-major matrix `[rows, cols]` in its stored dtype; rows are what matmuls stream.
#[derive(Clone)]
pub struct WeightMatrix {
    pub dtype: WeightDtype,
    pub rows: usize,
    pub cols: usize,
    bytes: SharedBytes,
    range: std::ops::Range<usize>,
}

/// The stored elements of a matrix, borrowed.
pub enum MatrixElements<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl WeightMatrix {
    pub fn from_f32(rows: usize, cols: usize, values: Vec<f32>) -> WeightMatrix {
        assert_eq!(values.len(), rows * cols, "matrix values must fill [rows, cols]");
        let bytes: Vec<u8> = bytemuck::cast_slice(&values).to_vec();
        Self::from_owned_bytes(WeightDtype::F32, rows, cols, bytes)
    }

    pub fn from_f16(rows: usize, cols: usize, values: Vec<f16>) -> WeightMatrix {
        assert_eq!(values.len(), rows * cols, "matrix values must fill [rows, cols]");
        let bytes: Vec<u8> = bytemuck::cast_slice(&values).to_vec();
        Self::from_owned_bytes(WeightDtype::F16, rows, cols, bytes)
    }

    pub fn from_bf16(rows: usize, cols: usize, values: Vec<bf16>) -> WeightMatrix {
        assert_eq!(values.len(), rows * cols, "matrix values must fill [rows, cols]");
        let bytes: Vec<u8> = bytemuck::cast_slice(&values).to_vec();
        Self::from_owned_bytes(WeightDtype::Bf16, rows, cols, bytes)
    }

    fn from_owned_bytes(dtype: WeightDtype, rows: usize, cols: usize, bytes: Vec<u8>) -> WeightMatrix {
        // A Vec<u8> is only byte-aligned; copy into u32 storage so f32 views are aligned.
        let words: Vec<u32> = bytes.chunks(4).map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_ne_bytes(w)
        }).collect();
        let len = bytes.len();
        let owner: SharedBytes = Arc::new(AlignedBytes(words));
        WeightMatrix { dtype, rows, cols, bytes: owner, range: 0..len }
    }

    pub fn elements(&self) -> MatrixElements<'_> {
        let bytes = &(*self.bytes).as_ref()[self.range.clone()];
        // Alignment was checked when the view was made (SafetensorsDir copies misaligned tensors).
        match self.dtype {
            WeightDtype::F32 => MatrixElements::F32(bytemuck::cast_slice(bytes)),
            WeightDtype::F16 => MatrixElements::F16(bytemuck::cast_slice(bytes)),
            WeightDtype::Bf16 => MatrixElements::Bf16(bytemuck::cast_slice(bytes)),
        }
    }

    /// Writes row `row` as f32 into `out` (`out.len() == cols`).
    pub fn row_to_f32(&self, row: usize, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.cols);
        let span = row * self.cols..(row + 1) * self.cols;
        match self.elements() {
            MatrixElements::F32(v) => out.copy_from_slice(&v[span]),
            MatrixElements::F16(v) => {
                use half::slice::HalfFloatSliceExt;
                v[span].convert_to_f32_slice(out)
            }
            MatrixElements::Bf16(v) => {
                use half::slice::HalfFloatSliceExt;
                v[span].convert_to_f32_slice(out)
            }
        }
    }

    pub fn size_bytes(&self) -> usize {
        self.range.len()
    }
}

struct AlignedBytes(Vec<u32>);

impl AsRef<[u8]> for AlignedBytes {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

pub struct LayerWeights {
    pub input_norm: Vec<f32>,        // [hidden]
    pub q_proj: WeightMatrix,        // [num_heads * head_dim, hidden]
    pub k_proj: WeightMatrix,        // [num_kv_heads * head_dim, hidden]
    pub v_proj: WeightMatrix,        // [num_kv_heads * head_dim, hidden]
    pub o_proj: WeightMatrix,        // [hidden, num_heads * head_dim]
    pub post_attention_norm: Vec<f32>, // [hidden]
    pub gate_proj: WeightMatrix,     // [intermediate, hidden]
    pub up_proj: WeightMatrix,       // [intermediate, hidden]
    pub down_proj: WeightMatrix,     // [hidden, intermediate]
}

pub struct LlamaWeights {
    pub embed_tokens: WeightMatrix, // [vocab, hidden]
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>, // [hidden]
    /// The output projection; the same matrix as `embed_tokens` when embeddings are tied.
    pub lm_head: WeightMatrix, // [vocab, hidden]
}

impl LlamaWeights {
    /// Loads and shape-checks every tensor of a Hugging Face Llama directory.
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<LlamaWeights, ModelError> {
        let files = SafetensorsDir::open(dir)?;
        Self::from_tensors(&files, config, dir)
    }

    pub fn from_tensors(files: &SafetensorsDir, config: &ModelConfig, dir: &Path) -> Result<LlamaWeights, ModelError> {
        let h = config.hidden_size;
        let matrix = |name: &str, rows: usize, cols: usize| load_matrix(files, dir, name, rows, cols);
        let vector = |name: &str, len: usize| load_vector(files, dir, name, len);
        let embed_tokens = matrix("model.embed_tokens.weight", config.vocab_size, h)?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = format!("model.layers.{i}");
            layers.push(LayerWeights {
                input_norm: vector(&format!("{p}.input_layernorm.weight"), h)?,
                q_proj: matrix(&format!("{p}.self_attn.q_proj.weight"), config.q_dim(), h)?,
                k_proj: matrix(&format!("{p}.self_attn.k_proj.weight"), config.kv_dim(), h)?,
                v_proj: matrix(&format!("{p}.self_attn.v_proj.weight"), config.kv_dim(), h)?,
                o_proj: matrix(&format!("{p}.self_attn.o_proj.weight"), h, config.q_dim())?,
                post_attention_norm: vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
                gate_proj: matrix(&format!("{p}.mlp.gate_proj.weight"), config.intermediate_size, h)?,
                up_proj: matrix(&format!("{p}.mlp.up_proj.weight"), config.intermediate_size, h)?,
                down_proj: matrix(&format!("{p}.mlp.down_proj.weight"), h, config.intermediate_size)?,
            });
        }
        let final_norm = vector("model.norm.weight", h)?;
        let lm_head = if files.get("lm_head.weight").is_some() {
            matrix("lm_head.weight", config.vocab_size, h)?
        } else if config.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            return Err(ModelError::MissingTensor { path: dir.into(), name: "lm_head.weight".into() });
        };
        Ok(LlamaWeights { embed_tokens, layers, final_norm, lm_head })
    }
}

fn load_matrix(files: &SafetensorsDir, dir: &Path, name: &str, rows: usize, cols: usize) -> Result<WeightMatrix, ModelError> {
    let location = files.get(name).ok_or_else(|| ModelError::MissingTensor { path: dir.into(), name: name.into() })?;
    if location.shape != [rows, cols] {
        return Err(ModelError::WrongShape {
            path: location.file.clone(),
            name: name.into(),
            got: location.shape.clone(),
            expected: vec![rows, cols],
        });
    }
    let (bytes, range) = location.shared_bytes();
    Ok(WeightMatrix { dtype: location.dtype, rows, cols, bytes, range })
}

fn load_vector(files: &SafetensorsDir, dir: &Path, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let location = files.get(name).ok_or_else(|| ModelError::MissingTensor { path: dir.into(), name: name.into() })?;
    if location.shape != [len] {
        return Err(ModelError::WrongShape { path: location.file.clone(), name: name.into(), got: location.shape.clone(), expected: vec![len] });
    }
    let (bytes, range) = location.shared_bytes();
    let matrix = WeightMatrix { dtype: location.dtype, rows: 1, cols: len, bytes, range };
    let mut out = vec![0.0; len];
    matrix.row_to_f32(0, &mut out);
    Ok(out)
}
