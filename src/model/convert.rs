//! Converts a Llama-architecture GGUF into a Hugging Face model directory (config.json,
//! generation_config.json, model.safetensors in f16, tokenizer.json, tokenizer_config.json), so
//! the rest of kiln only ever loads one format. The directory appears atomically: everything is
//! written to a temporary directory beside it and renamed into place at the end.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::f16;
use indicatif::ProgressBar;
use serde_json::{json, Value};

use super::gguf::{GgufFile, TensorInfo};
use super::gguf_tokenizer::tokenizer_files_from_gguf;
use super::staged::Staged;
use super::ModelError;

/// The model geometry, read from the GGUF's `<arch>.*` metadata.
#[derive(Debug, Clone, PartialEq)]
struct Geometry {
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    context_length: usize,
    rms_norm_eps: f32,
    rope_theta: f32,
    /// `rope_scaling` for config.json, `Value::Null` when there is none.
    rope_scaling: Value,
}

/// One tensor to write: where it comes from, what it is called and shaped in Hugging Face terms,
/// and, for Q and K, the head count whose interleaved-RoPE row order must be undone.
#[derive(Debug, Clone)]
struct PlannedTensor {
    gguf_name: String,
    hf_name: String,
    /// GGUF dims [ne0, ne1] become the row-major shape [ne1, ne0].
    hf_shape: Vec<usize>,
    unpermute_heads: Option<usize>,
}

/// Converts `gguf_path` into a Hugging Face directory at `out_dir`, which must not exist yet.
///
/// If `out_dir` appears while this runs (another process converting the same file), the finished
/// directory already there is kept and this call's work is discarded. `progress`, when given, is
/// set to the number of bytes to write and advanced as tensors are written.
pub fn convert_gguf_to_hf(gguf_path: &Path, out_dir: &Path, progress: Option<&ProgressBar>) -> Result<(), ModelError> {
    if out_dir.exists() {
        return Err(ModelError::invalid(out_dir, "conversion target already exists; remove it first"));
    }
    let gguf = GgufFile::open(gguf_path)?;
    let architecture = gguf.require_str("general.architecture")?;
    if architecture != "llama" {
        return Err(ModelError::UnsupportedArchitecture { path: gguf_path.into(), architecture: architecture.into() });
    }
    let geometry = read_geometry(&gguf)?;
    let plan = plan_tensors(&gguf, &geometry)?;
    let tied = !plan.iter().any(|t| t.hf_name == "lm_head.weight");
    // The tokenizer is built before any weights are written so an unsupported one fails fast.
    let tokenizer = tokenizer_files_from_gguf(&gguf, geometry.context_length)?;

    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| ModelError::io(&parent, e))?;
    let partial = Staged::dir_for(out_dir)?;

    let bos = gguf.get_u32("tokenizer.ggml.bos_token_id")?;
    let eos = gguf.get_u32("tokenizer.ggml.eos_token_id")?;
    write_json(&partial.path.join("config.json"), &config_json(&geometry, tied, bos, eos))?;
    write_json(&partial.path.join("generation_config.json"), &json!({"bos_token_id": bos, "eos_token_id": eos}))?;
    write_json(&partial.path.join("tokenizer.json"), &tokenizer.tokenizer_json)?;
    write_json(&partial.path.join("tokenizer_config.json"), &tokenizer.tokenizer_config)?;
    write_safetensors(&gguf, &plan, &partial.path.join("model.safetensors"), progress)?;
    match partial.place(out_dir) {
        Ok(()) => Ok(()),
        // Someone else finished the same conversion first; theirs is as good as ours.
        Err(_) if out_dir.join("config.json").is_file() => Ok(()),
        Err(e) => Err(ModelError::io(out_dir, e)),
    }
}

/// The model configuration a conversion of this GGUF would write: for loading a GGUF's weights
/// directly, without converting them (`gguf_weights`).
pub fn config_from_gguf(gguf: &GgufFile) -> Result<super::ModelConfig, ModelError> {
    let architecture = gguf.require_str("general.architecture")?;
    if architecture != "llama" {
        return Err(ModelError::UnsupportedArchitecture {
            path: gguf.path().into(),
            architecture: architecture.into(),
        });
    }
    let geometry = read_geometry(gguf)?;
    let tied = gguf.tensor("output.weight").is_none();
    let bos = gguf.get_u32("tokenizer.ggml.bos_token_id")?;
    let eos = gguf.get_u32("tokenizer.ggml.eos_token_id")?;
    super::ModelConfig::from_json(&config_json(&geometry, tied, bos, eos).to_string(), gguf.path())
}

fn read_geometry(gguf: &GgufFile) -> Result<Geometry, ModelError> {
    let invalid = |message: String| ModelError::invalid(gguf.path(), message);
    let key = |name: &str| format!("llama.{name}");
    let hidden = gguf.require_usize(&key("embedding_length"))?;
    let heads = gguf.require_usize(&key("attention.head_count"))?;
    let kv_heads = gguf.get_usize(&key("attention.head_count_kv"))?.unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(invalid(format!("head_count {heads} must be a positive multiple of head_count_kv {kv_heads}")));
    }
    let head_dim = match gguf.get_usize(&key("attention.key_length"))? {
        Some(d) => d,
        None if hidden.is_multiple_of(heads) => hidden / heads,
        None => return Err(invalid(format!("embedding_length {hidden} is not divisible by {heads} heads"))),
    };
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(invalid(format!("head dimension must be even and positive, got {head_dim}")));
    }
    if let Some(value_length) = gguf.get_usize(&key("attention.value_length"))? {
        if value_length != head_dim {
            return Err(invalid(format!("attention.value_length {value_length} differs from key_length {head_dim}")));
        }
    }
    if let Some(rotary) = gguf.get_usize(&key("rope.dimension_count"))? {
        if rotary != head_dim {
            return Err(invalid(format!(
                "rope.dimension_count {rotary} differs from the head dimension {head_dim}; partial rotary embeddings are not supported"
            )));
        }
    }
    let rope_scaling = match gguf.get_str(&key("rope.scaling.type"))? {
        None | Some("none") => Value::Null,
        Some("linear") => {
            let factor = gguf.get_f32(&key("rope.scaling.factor"))?.unwrap_or(1.0);
            json!({"type": "linear", "factor": tidy_f32(factor)})
        }
        Some(other) => return Err(invalid(format!("rope scaling `{other}` is not supported yet (supported: linear)"))),
    };
    let vocab = match gguf.get_usize(&key("vocab_size"))? {
        Some(v) => v,
        None => gguf
            .get_str_array("tokenizer.ggml.tokens")?
            .map(|tokens| tokens.len())
            .ok_or_else(|| invalid("neither llama.vocab_size nor tokenizer.ggml.tokens is present".into()))?,
    };
    let geometry = Geometry {
        hidden,
        intermediate: gguf.require_usize(&key("feed_forward_length"))?,
        layers: gguf.require_usize(&key("block_count"))?,
        heads,
        kv_heads,
        head_dim,
        vocab,
        context_length: gguf.get_usize(&key("context_length"))?.unwrap_or(2048),
        rms_norm_eps: gguf.get_f32(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        rope_theta: gguf.get_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        rope_scaling,
    };
    for (name, value) in [
        ("embedding_length", hidden),
        ("feed_forward_length", geometry.intermediate),
        ("block_count", geometry.layers),
        ("vocab_size", vocab),
    ] {
        if value == 0 {
            return Err(invalid(format!("llama.{name} must be positive")));
        }
    }
    Ok(geometry)
}

/// An f32 as the f64 with the same shortest decimal form, so 1e-5 stored as f32 is written to
/// JSON as 1e-5 and not 9.999999747378752e-6.
fn tidy_f32(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(value as f64)
}

fn config_json(g: &Geometry, tied: bool, bos: Option<u32>, eos: Option<u32>) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": g.hidden,
        "intermediate_size": g.intermediate,
        "num_hidden_layers": g.layers,
        "num_attention_heads": g.heads,
        "num_key_value_heads": g.kv_heads,
        "head_dim": g.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": tidy_f32(g.rms_norm_eps),
        "rope_theta": tidy_f32(g.rope_theta),
        "rope_scaling": g.rope_scaling,
        "max_position_embeddings": g.context_length,
        "vocab_size": g.vocab,
        "tie_word_embeddings": tied,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float16",
    })
}

/// Maps every GGUF tensor to its Hugging Face name and checks its shape. A tensor this table does
/// not know is an error: dropping it silently would produce a model that runs but is wrong.
fn plan_tensors(gguf: &GgufFile, g: &Geometry) -> Result<Vec<PlannedTensor>, ModelError> {
    let (hidden, q_dim, kv_dim) = (g.hidden, g.heads * g.head_dim, g.kv_heads * g.head_dim);
    // (GGUF name, HF name, GGUF dims, heads to un-permute)
    let mut wanted: Vec<(String, String, Vec<usize>, Option<usize>)> =
        vec![("token_embd.weight".into(), "model.embed_tokens.weight".into(), vec![hidden, g.vocab], None)];
    for layer in 0..g.layers {
        let gguf_name = |name: &str| format!("blk.{layer}.{name}.weight");
        let hf_name = |name: &str| format!("model.layers.{layer}.{name}.weight");
        wanted.extend([
            (gguf_name("attn_norm"), hf_name("input_layernorm"), vec![hidden], None),
            (gguf_name("attn_q"), hf_name("self_attn.q_proj"), vec![hidden, q_dim], Some(g.heads)),
            (gguf_name("attn_k"), hf_name("self_attn.k_proj"), vec![hidden, kv_dim], Some(g.kv_heads)),
            (gguf_name("attn_v"), hf_name("self_attn.v_proj"), vec![hidden, kv_dim], None),
            (gguf_name("attn_output"), hf_name("self_attn.o_proj"), vec![q_dim, hidden], None),
            (gguf_name("ffn_norm"), hf_name("post_attention_layernorm"), vec![hidden], None),
            (gguf_name("ffn_gate"), hf_name("mlp.gate_proj"), vec![hidden, g.intermediate], None),
            (gguf_name("ffn_up"), hf_name("mlp.up_proj"), vec![hidden, g.intermediate], None),
            (gguf_name("ffn_down"), hf_name("mlp.down_proj"), vec![g.intermediate, hidden], None),
        ]);
    }
    wanted.push(("output_norm.weight".into(), "model.norm.weight".into(), vec![hidden], None));
    if gguf.tensor("output.weight").is_some() {
        wanted.push(("output.weight".into(), "lm_head.weight".into(), vec![hidden, g.vocab], None));
    }

    let mut plan = Vec::with_capacity(wanted.len());
    for (gguf_name, hf_name, dims, unpermute_heads) in wanted {
        let info = gguf.require_tensor(&gguf_name)?;
        // ggml pads shapes with trailing 1s in some writers; they carry no meaning.
        let mut got = info.dims.clone();
        while got.len() > dims.len() && got.last() == Some(&1) {
            got.pop();
        }
        if got != dims {
            return Err(ModelError::WrongShape {
                path: gguf.path().into(),
                name: gguf_name,
                got: info.dims.clone(),
                expected: dims,
            });
        }
        if !info.ggml_type.can_dequantize() {
            return Err(ModelError::invalid(
                gguf.path(),
                format!("tensor `{gguf_name}` is {}, which kiln cannot dequantize yet", info.ggml_type),
            ));
        }
        plan.push(PlannedTensor { gguf_name, hf_name, hf_shape: dims.into_iter().rev().collect(), unpermute_heads });
    }

    if plan.len() != gguf.tensors().len() {
        let known: std::collections::HashSet<&str> = plan.iter().map(|t| t.gguf_name.as_str()).collect();
        let extra: Vec<&str> = gguf.tensors().iter().map(|t| t.name.as_str()).filter(|n| !known.contains(n)).collect();
        let hint = if extra.contains(&"rope_freqs.weight") {
            " (rope_freqs holds Llama 3.1's long-context RoPE scaling, which conversion does not support yet)"
        } else {
            ""
        };
        return Err(ModelError::invalid(
            gguf.path(),
            format!("unexpected tensors for a {}-layer Llama model: {}{hint}", g.layers, extra.join(", ")),
        ));
    }
    Ok(plan)
}

/// The GGUF row that holds Hugging Face row `hf_row` of a Q or K projection.
///
/// llama.cpp's converter reorders each head's rows so that RoPE can rotate adjacent pairs
/// (`w.reshape(heads, 2, head_dim/2, in).swapaxes(1, 2)`): HF row `j * head_dim/2 + i` of a head
/// (j = 0 for the first half of the rotate-half layout, 1 for the second) is stored as GGUF row
/// `2 * i + j`.
pub fn gguf_row_for_hf_row(hf_row: usize, head_dim: usize) -> usize {
    let (head, within) = (hf_row / head_dim, hf_row % head_dim);
    let half = head_dim / 2;
    let (j, i) = (within / half, within % half);
    head * head_dim + 2 * i + j
}

/// Writes the planned tensors as one f16 safetensors file, a row at a time, so memory stays at a
/// few rows whatever the model size. The format is an 8-byte little-endian header length, a JSON
/// header padded with spaces to a multiple of 8, then the tensors back to back.
fn write_safetensors(
    gguf: &GgufFile,
    plan: &[PlannedTensor],
    path: &Path,
    progress: Option<&ProgressBar>,
) -> Result<(), ModelError> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for tensor in plan {
        let n_bytes = tensor.hf_shape.iter().product::<usize>() * 2;
        header.insert(
            tensor.hf_name.clone(),
            json!({"dtype": "F16", "shape": tensor.hf_shape, "data_offsets": [offset, offset + n_bytes]}),
        );
        offset += n_bytes;
    }
    let mut header = Value::Object(header).to_string().into_bytes();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    if let Some(bar) = progress {
        bar.set_length(offset as u64);
    }

    let file = File::create(path).map_err(|e| ModelError::io(path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let io = |e| ModelError::io(path, e);
    out.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
    out.write_all(&header).map_err(io)?;

    let mut row_f32 = Vec::new();
    let mut row_f16 = Vec::new();
    for tensor in plan {
        let info = gguf.require_tensor(&tensor.gguf_name)?;
        let (row_len, n_rows) = (info.row_len(), info.n_rows());
        row_f32.resize(row_len, 0f32);
        let head_dim = tensor.unpermute_heads.map(|heads| n_rows / heads);
        for hf_row in 0..n_rows {
            let gguf_row = match head_dim {
                Some(head_dim) => gguf_row_for_hf_row(hf_row, head_dim),
                None => hf_row,
            };
            gguf.dequantize_row(info, gguf_row, &mut row_f32)?;
            encode_f16_row(gguf, info, &row_f32, &mut row_f16)?;
            out.write_all(&row_f16).map_err(io)?;
        }
        if let Some(bar) = progress {
            bar.inc((row_len * n_rows * 2) as u64);
        }
    }
    let file = out.into_inner().map_err(|e| ModelError::io(path, e.into_error()))?;
    file.sync_all().map_err(io)
}

/// f32 → little-endian f16 bytes, refusing values f16 cannot hold (they would become infinities
/// and poison every activation downstream).
fn encode_f16_row(gguf: &GgufFile, info: &TensorInfo, row: &[f32], out: &mut Vec<u8>) -> Result<(), ModelError> {
    out.clear();
    for &value in row {
        let half = f16::from_f32(value);
        if !half.is_finite() {
            return Err(ModelError::invalid(
                gguf.path(),
                format!("tensor `{}` holds {value}, which does not fit in float16", info.name),
            ));
        }
        out.extend_from_slice(&half.to_le_bytes());
    }
    Ok(())
}

fn write_json(path: &Path, value: &Value) -> Result<(), ModelError> {
    let text = serde_json::to_string_pretty(value).expect("a serde_json::Value always serializes");
    fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use safetensors::SafeTensors;

    use super::*;
    use crate::model::gguf::writer::{string, strings, GgufWriter};
    use crate::model::gguf::MetaValue;
    use crate::model::ModelConfig;

    const HIDDEN: usize = 64;
    const HEADS: usize = 4;
    const KV_HEADS: usize = 2;
    const HEAD_DIM: usize = 16;
    const INTER: usize = 96;
    const LAYERS: usize = 2;
    const VOCAB: usize = 6;

    /// Distinct, f16-exact values so every misplaced element shows: tensor `seed`, element `i`.
    fn values(seed: usize, n: usize) -> Vec<f32> {
        (0..n).map(|i| ((seed * 131 + i * 7) % 1024) as f32 / 256.0 - 2.0).collect()
    }

    /// A two-layer Llama with f32 weights, except token_embd which is Q8_0.
    pub(crate) fn tiny_llama(with_output: bool) -> (GgufWriter, HashMap<String, Vec<f32>>) {
        let mut source = HashMap::new();
        let mut writer = GgufWriter::new()
            .kv("general.architecture", string("llama"))
            .kv("llama.block_count", MetaValue::U32(LAYERS as u32))
            .kv("llama.context_length", MetaValue::U32(256))
            .kv("llama.embedding_length", MetaValue::U32(HIDDEN as u32))
            .kv("llama.feed_forward_length", MetaValue::U32(INTER as u32))
            .kv("llama.attention.head_count", MetaValue::U32(HEADS as u32))
            .kv("llama.attention.head_count_kv", MetaValue::U32(KV_HEADS as u32))
            .kv("llama.rope.freq_base", MetaValue::F32(100000.0))
            .kv("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(1e-5))
            .kv("llama.rope.dimension_count", MetaValue::U32(HEAD_DIM as u32))
            .kv("tokenizer.ggml.model", string("gpt2"))
            .kv("tokenizer.ggml.pre", string("smollm"))
            .kv("tokenizer.ggml.tokens", strings(&["<s>", "</s>", "a", "b", "ab", "\u{120}"]))
            .kv("tokenizer.ggml.token_type", MetaValue::Array([3, 3, 1, 1, 1, 1].map(MetaValue::I32).to_vec()))
            .kv("tokenizer.ggml.merges", strings(&["a b"]))
            .kv("tokenizer.ggml.bos_token_id", MetaValue::U32(0))
            .kv("tokenizer.ggml.eos_token_id", MetaValue::U32(1))
            .kv("tokenizer.ggml.add_bos_token", MetaValue::Bool(false));
        // token_embd in Q8_0: row r, block b has d = 1/64 and q = (r * 3 + k) % 64 - 32.
        let mut embd_bytes = Vec::new();
        let mut embd_values = Vec::new();
        for row in 0..VOCAB {
            for _block in 0..HIDDEN / 32 {
                embd_bytes.extend(f16::from_f32(1.0 / 64.0).to_le_bytes());
                for k in 0..32 {
                    let q = ((row * 3 + k) % 64) as i32 - 32;
                    embd_bytes.push(q as i8 as u8);
                    embd_values.push(q as f32 / 64.0);
                }
            }
        }
        writer = writer.tensor("token_embd.weight", &[HIDDEN as u64, VOCAB as u64], 8, embd_bytes);
        source.insert("token_embd.weight".to_string(), embd_values);
        let mut f32_tensor = |writer: GgufWriter, name: String, dims: &[usize]| {
            let data = values(source.len(), dims.iter().product());
            let dims_u64: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
            let writer = writer.f32_tensor(&name, &dims_u64, &data);
            source.insert(name, data);
            writer
        };
        for layer in 0..LAYERS {
            let name = |n: &str| format!("blk.{layer}.{n}.weight");
            writer = f32_tensor(writer, name("attn_norm"), &[HIDDEN]);
            writer = f32_tensor(writer, name("attn_q"), &[HIDDEN, HEADS * HEAD_DIM]);
            writer = f32_tensor(writer, name("attn_k"), &[HIDDEN, KV_HEADS * HEAD_DIM]);
            writer = f32_tensor(writer, name("attn_v"), &[HIDDEN, KV_HEADS * HEAD_DIM]);
            writer = f32_tensor(writer, name("attn_output"), &[HEADS * HEAD_DIM, HIDDEN]);
            writer = f32_tensor(writer, name("ffn_norm"), &[HIDDEN]);
            writer = f32_tensor(writer, name("ffn_gate"), &[HIDDEN, INTER]);
            writer = f32_tensor(writer, name("ffn_up"), &[HIDDEN, INTER]);
            writer = f32_tensor(writer, name("ffn_down"), &[INTER, HIDDEN]);
        }
        writer = f32_tensor(writer, "output_norm.weight".into(), &[HIDDEN]);
        if with_output {
            writer = f32_tensor(writer, "output.weight".into(), &[HIDDEN, VOCAB]);
        }
        (writer, source)
    }

    fn write_gguf(dir: &Path, writer: &GgufWriter) -> PathBuf {
        let path = dir.join("tiny.gguf");
        fs::write(&path, writer.to_bytes()).unwrap();
        path
    }

    /// llama.cpp's `permute` as its converter applies it, written independently of
    /// `gguf_row_for_hf_row`: `w.reshape(heads, 2, rows/heads/2, in).swapaxes(1, 2)`.
    fn llama_cpp_permute(hf: &[f32], heads: usize, row_len: usize) -> Vec<f32> {
        let rows = hf.len() / row_len;
        let half = rows / heads / 2;
        let mut out = vec![f32::NAN; hf.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..half {
                    let from = h * 2 * half + j * half + i; // index in [heads, 2, half]
                    let to = h * 2 * half + i * 2 + j; // index in [heads, half, 2]
                    out[to * row_len..(to + 1) * row_len].copy_from_slice(&hf[from * row_len..(from + 1) * row_len]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (heads, row_len, head_dim) = (3, 2, 8);
        let hf: Vec<f32> = (0..heads * head_dim * row_len).map(|i| i as f32).collect();
        let gguf = llama_cpp_permute(&hf, heads, row_len);
        for hf_row in 0..heads * head_dim {
            let gguf_row = gguf_row_for_hf_row(hf_row, head_dim);
            assert_eq!(gguf[gguf_row * row_len..][..row_len], hf[hf_row * row_len..][..row_len], "row {hf_row}");
        }
        // Within a head: rows 0,1,2,3 | 4,5,6,7 of HF come from GGUF rows 0,2,4,6 | 1,3,5,7.
        let map: Vec<usize> = (0..8).map(|r| gguf_row_for_hf_row(r, 8)).collect();
        assert_eq!(map, [0, 2, 4, 6, 1, 3, 5, 7]);
    }

    fn read_f16(tensors: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
        let view = tensors.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(view.dtype(), safetensors::Dtype::F16, "{name}");
        let values = view.data().chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
        (view.shape().to_vec(), values)
    }

    #[test]
    fn converts_a_tiny_llama() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, source) = tiny_llama(true);
        let gguf_path = write_gguf(dir.path(), &writer);
        let out = dir.path().join("models").join("tiny");
        let bar = ProgressBar::hidden();
        convert_gguf_to_hf(&gguf_path, &out, Some(&bar)).unwrap();
        assert_eq!(bar.position(), bar.length().unwrap());

        let config = ModelConfig::from_dir(&out).unwrap();
        assert_eq!(
            (config.hidden_size, config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim),
            (HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM)
        );
        assert_eq!((config.intermediate_size, config.vocab_size, config.max_position_embeddings), (INTER, VOCAB, 256));
        assert_eq!((config.rope_theta, config.rms_norm_eps), (100000.0, 1e-5));
        assert!(!config.tie_word_embeddings);
        assert_eq!((config.bos_token_id, config.eos_token_ids.clone()), (Some(0), vec![1]));
        let raw: Value = serde_json::from_slice(&fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(raw["rms_norm_eps"].as_f64(), Some(1e-5), "eps written as its f32 shortest form, not 9.99999974e-6");

        let bytes = fs::read(out.join("model.safetensors")).unwrap();
        let tensors = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(tensors.len(), 3 + 9 * LAYERS);
        let (shape, embd) = read_f16(&tensors, "model.embed_tokens.weight");
        assert_eq!(shape, [VOCAB, HIDDEN]);
        assert_eq!(embd, source["token_embd.weight"], "Q8_0 values are f16-exact");
        for layer in 0..LAYERS {
            let hf = |n: &str| format!("model.layers.{layer}.{n}.weight");
            let gguf = |n: &str| source[&format!("blk.{layer}.{n}.weight")].clone();
            let (shape, q) = read_f16(&tensors, &hf("self_attn.q_proj"));
            assert_eq!(shape, [HEADS * HEAD_DIM, HIDDEN]);
            assert_eq!(llama_cpp_permute(&q, HEADS, HIDDEN), gguf("attn_q"), "q_proj un-permuted with {HEADS} heads");
            let (shape, k) = read_f16(&tensors, &hf("self_attn.k_proj"));
            assert_eq!(shape, [KV_HEADS * HEAD_DIM, HIDDEN]);
            assert_eq!(
                llama_cpp_permute(&k, KV_HEADS, HIDDEN),
                gguf("attn_k"),
                "k_proj un-permuted with {KV_HEADS} heads"
            );
            assert_eq!(read_f16(&tensors, &hf("self_attn.v_proj")).1, gguf("attn_v"), "v_proj is not permuted");
            assert_eq!(read_f16(&tensors, &hf("mlp.down_proj")), (vec![HIDDEN, INTER], gguf("ffn_down")));
            assert_eq!(read_f16(&tensors, &hf("input_layernorm")), (vec![HIDDEN], gguf("attn_norm")));
            assert_eq!(read_f16(&tensors, &hf("post_attention_layernorm")).1, gguf("ffn_norm"));
        }
        assert_eq!(read_f16(&tensors, "lm_head.weight"), (vec![VOCAB, HIDDEN], source["output.weight"].clone()));

        let tokenizer = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        assert_eq!(tokenizer.encode("<s>ab", false).unwrap().get_ids(), [0, 4]);
        let tokenizer_config: Value =
            serde_json::from_slice(&fs::read(out.join("tokenizer_config.json")).unwrap()).unwrap();
        assert_eq!(tokenizer_config["eos_token"], "</s>");
        assert_eq!(tokenizer_config["model_max_length"], 256);
        let leftovers: Vec<_> = fs::read_dir(out.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, ["tiny"], "no partial directory is left behind");

        let err = convert_gguf_to_hf(&gguf_path, &out, None).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
    }

    #[test]
    fn ties_embeddings_without_output_weight() {
        let dir = tempfile::tempdir().unwrap();
        let gguf_path = write_gguf(dir.path(), &tiny_llama(false).0);
        let out = dir.path().join("tied");
        convert_gguf_to_hf(&gguf_path, &out, None).unwrap();
        assert!(ModelConfig::from_dir(&out).unwrap().tie_word_embeddings);
        let bytes = fs::read(out.join("model.safetensors")).unwrap();
        assert!(SafeTensors::deserialize(&bytes).unwrap().tensor("lm_head.weight").is_err());
    }

    #[test]
    fn rejects_models_it_cannot_convert() {
        let dir = tempfile::tempdir().unwrap();
        let convert = |writer: &GgufWriter| {
            let path = write_gguf(dir.path(), writer);
            convert_gguf_to_hf(&path, &dir.path().join("out"), None).unwrap_err()
        };

        let (mut writer, _) = tiny_llama(true);
        writer.tensors.retain(|t| t.name != "blk.1.ffn_up.weight");
        assert!(matches!(convert(&writer), ModelError::MissingTensor { name, .. } if name == "blk.1.ffn_up.weight"));

        let (mut writer, _) = tiny_llama(true);
        let k = writer.tensors.iter_mut().find(|t| t.name == "blk.0.attn_k.weight").unwrap();
        k.dims = vec![(KV_HEADS * HEAD_DIM) as u64, HIDDEN as u64];
        let err = convert(&writer);
        assert!(matches!(&err, ModelError::WrongShape { name, .. } if name == "blk.0.attn_k.weight"), "{err}");

        let (writer, _) = tiny_llama(true);
        let err = convert(&writer.f32_tensor("rope_freqs.weight", &[8], &[1.0; 8]));
        assert!(err.to_string().contains("unexpected tensors for a 2-layer Llama model: rope_freqs.weight"), "{err}");

        let (mut writer, _) = tiny_llama(true);
        writer.metadata[0].1 = string("qwen2");
        assert!(
            matches!(convert(&writer), ModelError::UnsupportedArchitecture { architecture, .. } if architecture == "qwen2")
        );

        // A value f16 cannot hold fails mid-write; the partial directory must not survive.
        let (mut writer, _) = tiny_llama(true);
        let norm = writer.tensors.iter_mut().find(|t| t.name == "output_norm.weight").unwrap();
        norm.data[..4].copy_from_slice(&1e6f32.to_le_bytes());
        let err = convert(&writer);
        assert!(err.to_string().contains("does not fit in float16"), "{err}");
        let entries: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(entries, ["tiny.gguf"], "a failed conversion leaves nothing behind");
    }
}
