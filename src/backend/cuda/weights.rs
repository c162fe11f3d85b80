//! The model's weights on the device, in the activation dtype, with the projections that read
//! the same input fused: q/k/v into one `[q_dim + 2 kv_dim, hidden]` matrix and gate/up into one
//! `[2 ffn, hidden]`, so each needs one launch. Norm weights stay f32.

use half::{bf16, f16};

use super::device::{DeviceArray, DeviceBuffer, Dtype, Gpu};
use super::random::fill_random;
use super::CudaError;
use crate::model::safetensors_dir::WeightDtype;
use crate::model::weights::{LlamaWeights, MatrixElements, WeightMatrix};
use crate::model::ModelConfig;

pub struct LayerDeviceWeights {
    pub input_norm: DeviceBuffer,          // [hidden] f32
    pub qkv: DeviceBuffer,                 // [q_dim + 2 * kv_dim, hidden]
    pub o_proj: DeviceBuffer,              // [hidden, q_dim]
    pub post_attention_norm: DeviceBuffer, // [hidden] f32
    pub gate_up: DeviceBuffer,             // [2 * intermediate, hidden]
    pub down_proj: DeviceBuffer,           // [hidden, intermediate]
}

pub struct DeviceWeights {
    pub dtype: Dtype,
    pub embed_tokens: DeviceBuffer, // [vocab, hidden]
    pub layers: Vec<LayerDeviceWeights>,
    pub final_norm: DeviceBuffer, // [hidden] f32
    /// None when tied to embed_tokens.
    pub lm_head: Option<DeviceBuffer>, // [vocab, hidden]
}

impl DeviceWeights {
    pub fn lm_head(&self) -> DeviceArray {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens).array()
    }

    /// Bytes of every matrix a decode step streams (everything but the embedding table, which is
    /// gathered, unless it doubles as the output head).
    pub fn streamed_bytes(config: &ModelConfig, dtype: Dtype) -> usize {
        let h = config.hidden_size;
        let per_layer =
            h * (config.q_dim() + 2 * config.kv_dim()) + config.q_dim() * h + 3 * h * config.intermediate_size;
        (config.num_layers * per_layer + config.vocab_size * h) * dtype.size_bytes()
    }

    /// Bytes of all device weights.
    pub fn total_bytes(config: &ModelConfig, dtype: Dtype) -> usize {
        let embed =
            if config.tie_word_embeddings { 0 } else { config.vocab_size * config.hidden_size * dtype.size_bytes() };
        Self::streamed_bytes(config, dtype) + embed + (2 * config.num_layers + 1) * config.hidden_size * 4
    }

    /// Copies host weights to the device, converting matrices to `dtype` (f16 or bf16).
    pub fn upload(
        gpu: &Gpu,
        config: &ModelConfig,
        weights: &LlamaWeights,
        dtype: Dtype,
    ) -> Result<DeviceWeights, CudaError> {
        let matrices = |parts: &[&WeightMatrix]| -> Result<DeviceBuffer, CudaError> {
            let len: usize = parts.iter().map(|m| m.rows * m.cols).sum();
            let buffer = gpu.alloc(dtype, len)?;
            let mut offset = 0;
            for part in parts {
                upload_matrix(gpu, buffer.array().slice(offset, part.rows * part.cols), part, dtype)?;
                offset += part.rows * part.cols;
            }
            Ok(buffer)
        };
        let layers = weights
            .layers
            .iter()
            .map(|l| {
                Ok(LayerDeviceWeights {
                    input_norm: gpu.upload_f32(&l.input_norm)?,
                    qkv: matrices(&[&l.q_proj, &l.k_proj, &l.v_proj])?,
                    o_proj: matrices(&[&l.o_proj])?,
                    post_attention_norm: gpu.upload_f32(&l.post_attention_norm)?,
                    gate_up: matrices(&[&l.gate_proj, &l.up_proj])?,
                    down_proj: matrices(&[&l.down_proj])?,
                })
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        let tied = config.tie_word_embeddings;
        Ok(DeviceWeights {
            dtype,
            embed_tokens: matrices(&[&weights.embed_tokens])?,
            layers,
            final_norm: gpu.upload_f32(&weights.final_norm)?,
            lm_head: if tied { None } else { Some(matrices(&[&weights.lm_head])?) },
        })
    }

    /// Generates on the device exactly what `model::random::random_llama_weights(config, seed, _)`
    /// generates on the host (same seeds, same order, same values), in milliseconds: benchmarks
    /// of real geometries need no weight files and no host memory.
    pub fn random(gpu: &Gpu, config: &ModelConfig, seed: u64, dtype: Dtype) -> Result<DeviceWeights, CudaError> {
        let h = config.hidden_size;
        let mut next_seed = seed;
        let mut fill = |buffer: &DeviceBuffer, offset: usize, rows: usize, cols: usize| -> Result<(), CudaError> {
            next_seed = next_seed.wrapping_add(1);
            let scale = 1.0 / (cols as f32).sqrt();
            gpu.launch(&fill_random(gpu, buffer.array().slice(offset, rows * cols), next_seed, scale, 0.0)?)
        };
        let norm = |norm_seed: u64| -> Result<DeviceBuffer, CudaError> {
            let buffer = gpu.alloc(Dtype::F32, h)?;
            gpu.launch(&fill_random(gpu, buffer.array(), norm_seed, 0.1, 1.0)?)?;
            Ok(buffer)
        };
        let (q_dim, kv_dim, ffn) = (config.q_dim(), config.kv_dim(), config.intermediate_size);
        let embed_tokens = gpu.alloc(dtype, config.vocab_size * h)?;
        fill(&embed_tokens, 0, config.vocab_size, h)?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let input_norm = norm(seed ^ (1000 + i as u64))?;
            let qkv = gpu.alloc(dtype, (q_dim + 2 * kv_dim) * h)?;
            fill(&qkv, 0, q_dim, h)?;
            fill(&qkv, q_dim * h, kv_dim, h)?;
            fill(&qkv, (q_dim + kv_dim) * h, kv_dim, h)?;
            let o_proj = gpu.alloc(dtype, h * q_dim)?;
            fill(&o_proj, 0, h, q_dim)?;
            let post_attention_norm = norm(seed ^ (2000 + i as u64))?;
            let gate_up = gpu.alloc(dtype, 2 * ffn * h)?;
            fill(&gate_up, 0, ffn, h)?;
            fill(&gate_up, ffn * h, ffn, h)?;
            let down_proj = gpu.alloc(dtype, h * ffn)?;
            fill(&down_proj, 0, h, ffn)?;
            layers.push(LayerDeviceWeights { input_norm, qkv, o_proj, post_attention_norm, gate_up, down_proj });
        }
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            let lm_head = gpu.alloc(dtype, config.vocab_size * h)?;
            fill(&lm_head, 0, config.vocab_size, h)?;
            Some(lm_head)
        };
        let final_norm = norm(seed ^ 3000)?;
        gpu.synchronize()?;
        Ok(DeviceWeights { dtype, embed_tokens, layers, final_norm, lm_head })
    }
}

/// One host matrix into a device range, converted to `dtype` on the host when the stored dtype
/// differs (start-up only).
fn upload_matrix(gpu: &Gpu, dst: DeviceArray, matrix: &WeightMatrix, dtype: Dtype) -> Result<(), CudaError> {
    let same = matches!(
        (matrix.format.float_dtype(), dtype),
        (Some(WeightDtype::F16), Dtype::F16) | (Some(WeightDtype::Bf16), Dtype::Bf16)
    );
    if same {
        let bytes: &[u8] = match matrix.elements() {
            MatrixElements::F16(v) => bytemuck::cast_slice(v),
            MatrixElements::Bf16(v) => bytemuck::cast_slice(v),
            MatrixElements::F32(v) => bytemuck::cast_slice(v),
            MatrixElements::Quantized(_) => unreachable!("only f16/bf16 matrices are uploaded as stored"),
        };
        gpu.copy_to_device(dst, bytes)?;
        return gpu.synchronize();
    }
    let mut row = vec![0.0f32; matrix.cols];
    let mut converted: Vec<u16> = Vec::with_capacity(matrix.rows * matrix.cols);
    for r in 0..matrix.rows {
        matrix.row_to_f32(r, &mut row);
        match dtype {
            Dtype::F16 => converted.extend(row.iter().map(|&v| f16::from_f32(v).to_bits())),
            Dtype::Bf16 => converted.extend(row.iter().map(|&v| bf16::from_f32(v).to_bits())),
            other => return Err(CudaError::Unsupported(format!("weights in {other:?}"))),
        }
    }
    gpu.copy_to_device(dst, bytemuck::cast_slice(&converted))?;
    gpu.synchronize()
}
