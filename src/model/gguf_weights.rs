//! Loads a Llama GGUF's weights directly, keeping them in their stored format: float tensors as
//! they are, block quantizations regrouped into kiln's groups of 16 rows (`packed_groups`), all
//! copied into one huge-page arena (`weight_arena`'s, which then has nothing left to copy). What
//! lets `kiln` run the original quantized file instead of its f16 conversion.
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
use super::weight_arena::ArenaFill;
use super::weights::{LayerWeights, LlamaWeights, WeightFormat, WeightMatrix};
use super::{ModelConfig, ModelError};

/// The configuration and weights of the Llama model in the GGUF at `path`.
pub fn load_gguf_weights(path: &Path) -> Result<(ModelConfig, LlamaWeights), ModelError> {
    let gguf = GgufFile::open(path)?;
    let config = config_from_gguf(&gguf)?;
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: read-only map of a file kiln never writes, with the same contract as GgufFile::open.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    // First every tensor is checked and given its place in one arena, then the arena is filled,
    // then the matrices become views into it.
    let mut loader = Loader { gguf: &gguf, planned: Vec::new(), arena_bytes: 0 };
    let mut weights = loader.weights(&config)?;
    let arena = loader.fill_arena(path, &map)?;
    let mut views = loader
        .planned
        .into_iter()
        .map(|plan| WeightMatrix::from_shared(plan.format, plan.rows, plan.cols, arena.clone(), plan.arena));
    let mut next = || views.next().expect("one view per planned matrix");
    weights.embed_tokens = next();
    for layer in &mut weights.layers {
        for matrix in [&mut layer.q_proj, &mut layer.k_proj, &mut layer.v_proj, &mut layer.o_proj] {
            *matrix = next();
        }
        for matrix in [&mut layer.gate_proj, &mut layer.up_proj, &mut layer.down_proj] {
            *matrix = next();
        }
    }
    weights.lm_head = if gguf.tensor("output.weight").is_some() { next() } else { weights.embed_tokens.clone() };
    Ok((config, weights))
}

/// Where a matrix goes in the arena and where it comes from in the file.
struct Planned {
    format: WeightFormat,
    rows: usize,
    cols: usize,
    source: std::ops::Range<usize>,
    row_bytes: usize,
    unpermute_head_dim: Option<usize>,
    arena: std::ops::Range<usize>,
}

struct Loader<'a> {
    gguf: &'a GgufFile,
    planned: Vec<Planned>,
    arena_bytes: usize,
}

impl Loader<'_> {
    /// Checks every tensor and plans its matrices (in the order `load_gguf_weights` fills them
    /// back in); the returned weights hold the real norms and empty placeholder matrices.
    fn weights(&mut self, c: &ModelConfig) -> Result<LlamaWeights, ModelError> {
        let h = c.hidden_size;
        let embed_tokens = self.matrix("token_embd.weight", c.vocab_size, h, None)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let name = |n: &str| format!("blk.{i}.{n}.weight");
            layers.push(LayerWeights {
                q_proj: self.matrix(&name("attn_q"), c.q_dim(), h, Some(c.head_dim))?,
                k_proj: self.matrix(&name("attn_k"), c.kv_dim(), h, Some(c.head_dim))?,
                v_proj: self.matrix(&name("attn_v"), c.kv_dim(), h, None)?,
                o_proj: self.matrix(&name("attn_output"), h, c.q_dim(), None)?,
                gate_proj: self.matrix(&name("ffn_gate"), c.intermediate_size, h, None)?,
                up_proj: self.matrix(&name("ffn_up"), c.intermediate_size, h, None)?,
                down_proj: self.matrix(&name("ffn_down"), h, c.intermediate_size, None)?,
                input_norm: self.vector(&name("attn_norm"), h)?,
                post_attention_norm: self.vector(&name("ffn_norm"), h)?,
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
            return Err(ModelError::WrongShape {
                path: self.gguf.path().into(),
                name: name.into(),
                got: info.dims.clone(),
                expected,
            });
        }
        Ok(info)
    }

    /// Plans a matrix kept in its stored format (block quantizations regrouped into kiln's row
    /// layouts). `unpermute_head_dim` is set for Q and K, whose rows go back to Hugging Face order.
    fn matrix(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        unpermute_head_dim: Option<usize>,
    ) -> Result<WeightMatrix, ModelError> {
        let info = self.tensor(name, rows, cols)?;
        let format = WeightFormat::from_ggml(info.ggml_type).ok_or_else(|| {
            ModelError::invalid(
                self.gguf.path(),
                format!(
                    "tensor `{name}` is {}; kiln computes on F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K",
                    info.ggml_type
                ),
            )
        })?;
        if !cols.is_multiple_of(format.block_values()) {
            return Err(ModelError::invalid(self.gguf.path(), format!("tensor `{name}`: rows are not whole blocks")));
        }
        let (source, row_bytes) = (self.gguf.tensor_file_range(info), info.row_bytes());
        let start = self.arena_bytes.next_multiple_of(64);
        let arena = start..start + format.matrix_bytes(rows, cols);
        self.arena_bytes = arena.end;
        self.planned.push(Planned { format, rows, cols, source, row_bytes, unpermute_head_dim, arena });
        Ok(WeightMatrix::from_f32(0, cols, Vec::new()))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let info = self.tensor(name, 1, len)?;
        self.gguf.dequantize(info)
    }

    /// All matrices in one anonymous mapping advised for transparent huge pages: decode streams
    /// every weight once per token, and with 4 KiB pages the page walks (dearer under
    /// virtualization) cost a share of the bandwidth. The file pages each matrix came from are
    /// released as soon as it is copied, so peak memory stays near one copy of the model.
    fn fill_arena(&self, path: &Path, file: &Mmap) -> Result<SharedBytes, ModelError> {
        let mut arena = ArenaFill::new(self.arena_bytes).map_err(|e| ModelError::io(path, e))?;
        for plan in &self.planned {
            let data = &file[plan.source.clone()];
            let source_row = |r: usize| {
                let stored = plan.unpermute_head_dim.map_or(r, |head_dim| gguf_row_for_hf_row(r, head_dim));
                &data[stored * plan.row_bytes..(stored + 1) * plan.row_bytes]
            };
            plan.format.pack_ggml_matrix(plan.rows, plan.cols, source_row, &mut arena.bytes_mut()[plan.arena.clone()]);
            // SAFETY: the file map is read-only and shared, so MADV_DONTNEED loses nothing: a
            // later read of these pages faults them back in from the file.
            let _ = unsafe {
                file.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, plan.source.start, plan.source.len())
            };
        }
        Ok(Arc::new(arena.finish().map_err(|e| ModelError::io(path, e))?))
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;
    use crate::model::gguf::writer::{string, GgufWriter};
    use crate::model::gguf::MetaValue;
    use crate::model::packed_quant::{quantize_to_ggml_row, PackedQuant};
    use crate::testing::seeded_values;

    const HIDDEN: usize = 64;
    const FFN: usize = 96;
    const HEADS: usize = 2;
    const HEAD_DIM: usize = 32;
    const VOCAB: usize = 40;

    /// `[rows, cols]` values, row-major in Hugging Face order.
    fn values(seed: u64, rows: usize, cols: usize) -> Vec<f32> {
        seeded_values(seed, rows * cols)
    }

    fn f16_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect()
    }

    /// Rows reordered the way llama.cpp's converter stores Q and K.
    fn permuted(values: &[f32], cols: usize) -> Vec<f32> {
        let rows = values.len() / cols;
        let mut out = vec![0.0; values.len()];
        for hf_row in 0..rows {
            let stored = gguf_row_for_hf_row(hf_row, HEAD_DIM);
            out[stored * cols..(stored + 1) * cols].copy_from_slice(&values[hf_row * cols..(hf_row + 1) * cols]);
        }
        out
    }

    fn quantized(format: PackedQuant, values: &[f32], cols: usize) -> Vec<u8> {
        values.chunks_exact(cols).flat_map(|row| quantize_to_ggml_row(format, row)).collect()
    }

    #[test]
    fn loads_every_format_in_hugging_face_row_order() {
        let embed = values(1, VOCAB, HIDDEN);
        let q = values(2, HEADS * HEAD_DIM, HIDDEN);
        let k = values(3, HEAD_DIM, HIDDEN);
        let v = values(4, HEAD_DIM, HIDDEN);
        let gate = values(5, FFN, HIDDEN);
        let output = values(6, HIDDEN, HIDDEN);
        let up = values(7, FFN, HIDDEN);
        let norm = vec![1.5f32; HIDDEN];
        let d = |rows: usize, cols: usize| [cols as u64, rows as u64];
        let writer = GgufWriter::new()
            .kv("general.architecture", string("llama"))
            .kv("llama.embedding_length", MetaValue::U32(HIDDEN as u32))
            .kv("llama.feed_forward_length", MetaValue::U32(FFN as u32))
            .kv("llama.block_count", MetaValue::U32(1))
            .kv("llama.attention.head_count", MetaValue::U32(HEADS as u32))
            .kv("llama.attention.head_count_kv", MetaValue::U32(1))
            .kv("llama.vocab_size", MetaValue::U32(VOCAB as u32))
            .kv("llama.rope.freq_base", MetaValue::F32(100000.0))
            .kv("tokenizer.ggml.eos_token_id", MetaValue::U32(2))
            .tensor("token_embd.weight", &d(VOCAB, HIDDEN), 8, quantized(PackedQuant::Q8_0, &embed, HIDDEN))
            .f32_tensor("blk.0.attn_norm.weight", &[HIDDEN as u64], &norm)
            .tensor("blk.0.attn_q.weight", &d(HEADS * HEAD_DIM, HIDDEN), 1, f16_bytes(&permuted(&q, HIDDEN)))
            .tensor(
                "blk.0.attn_k.weight",
                &d(HEAD_DIM, HIDDEN),
                3,
                quantized(PackedQuant::Q4_1, &permuted(&k, HIDDEN), HIDDEN),
            )
            .tensor("blk.0.attn_v.weight", &d(HEAD_DIM, HIDDEN), 2, quantized(PackedQuant::Q4_0, &v, HIDDEN))
            .tensor(
                "blk.0.attn_output.weight",
                &d(HIDDEN, HEADS * HEAD_DIM),
                6,
                quantized(PackedQuant::Q5_0, &output, HIDDEN),
            )
            .f32_tensor("blk.0.ffn_norm.weight", &[HIDDEN as u64], &norm)
            .tensor("blk.0.ffn_gate.weight", &d(FFN, HIDDEN), 1, f16_bytes(&gate))
            .tensor("blk.0.ffn_up.weight", &d(FFN, HIDDEN), 7, quantized(PackedQuant::Q5_1, &up, HIDDEN))
            .tensor("blk.0.ffn_down.weight", &d(HIDDEN, FFN), 1, f16_bytes(&values(8, HIDDEN, FFN)))
            .f32_tensor("output_norm.weight", &[HIDDEN as u64], &norm);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        std::fs::write(&path, writer.to_bytes()).unwrap();

        let (config, weights) = load_gguf_weights(&path).unwrap();
        assert_eq!(
            (config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim),
            (HIDDEN, HEADS, 1, HEAD_DIM)
        );
        assert!(config.tie_word_embeddings);
        assert_eq!(config.eos_token_ids, vec![2]);
        let layer = &weights.layers[0];
        assert_eq!(layer.input_norm, norm);
        let formats = [&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj, &layer.up_proj, &weights.lm_head]
            .map(|m| m.format.name());
        assert_eq!(formats, ["f16", "q4_1", "q4_0", "q5_0", "q5_1", "q8_0"]);

        // Each loaded row equals the source row as stored (f16-rounded or quantized, then back).
        let check = |name: &str, matrix: &WeightMatrix, source: &[f32], stored: &dyn Fn(&[f32]) -> Vec<f32>| {
            let cols = matrix.cols;
            let mut row = vec![f32::NAN; cols];
            for r in 0..matrix.rows {
                matrix.row_to_f32(r, &mut row);
                assert_eq!(row, stored(&source[r * cols..(r + 1) * cols]), "{name} row {r}");
            }
        };
        let as_f16 = |row: &[f32]| row.iter().map(|&v| f16::from_f32(v).to_f32()).collect::<Vec<f32>>();
        let through = |format: PackedQuant| {
            move |row: &[f32]| {
                let mut out = vec![0.0; row.len()];
                crate::model::packed_quant::dequantize_ggml_row(format, &quantize_to_ggml_row(format, row), &mut out);
                out
            }
        };
        check("q_proj", &layer.q_proj, &q, &as_f16);
        check("k_proj", &layer.k_proj, &k, &through(PackedQuant::Q4_1));
        check("v_proj", &layer.v_proj, &v, &through(PackedQuant::Q4_0));
        check("gate_proj", &layer.gate_proj, &gate, &as_f16);
        check("o_proj", &layer.o_proj, &output, &through(PackedQuant::Q5_0));
        check("up_proj", &layer.up_proj, &up, &through(PackedQuant::Q5_1));
        check("lm_head", &weights.lm_head, &embed, &through(PackedQuant::Q8_0));

        // The matrices sit in one huge-page arena already, so start-up's arena pass keeps them
        // where they are (no second copy of the model; tied embeddings stay one view).
        let first = weights.layers[0].down_proj.bytes().as_ptr();
        assert!(weights.layers[0].down_proj.in_weight_arena() && weights.lm_head.in_weight_arena());
        let weights = crate::model::weight_arena::into_huge_page_arena(weights);
        assert_eq!(weights.layers[0].down_proj.bytes().as_ptr(), first);
        assert!(weights.embed_tokens.same_view(&weights.lm_head));
    }

    #[test]
    fn rejects_formats_it_cannot_compute_on() {
        let writer = GgufWriter::new()
            .kv("general.architecture", string("llama"))
            .kv("llama.embedding_length", MetaValue::U32(32))
            .kv("llama.feed_forward_length", MetaValue::U32(32))
            .kv("llama.block_count", MetaValue::U32(1))
            .kv("llama.attention.head_count", MetaValue::U32(1))
            .kv("llama.vocab_size", MetaValue::U32(4))
            // IQ4_NL (type 20): 18-byte blocks of 32 values.
            .tensor("token_embd.weight", &[32, 4], 20, vec![0; 4 * 18]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iq4_nl.gguf");
        std::fs::write(&path, writer.to_bytes()).unwrap();
        let err = load_gguf_weights(&path).err().expect("IQ4_NL is refused").to_string();
        assert!(err.contains("tensor `token_embd.weight` is IQ4_NL"), "{err}");
    }
}
