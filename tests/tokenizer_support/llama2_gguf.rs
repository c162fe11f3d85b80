//! The Llama-2 tokenizer fixture written as a SentencePiece GGUF (`tokenizer.ggml.model =
//! "llama"`, tokens, scores and token types, as llama.cpp's converter writes Llama-2), with a tiny
//! random-weight Llama model so the file also loads and serves. The file is deterministic: the
//! llama.cpp reference ids in tests/data/llama2_gguf_tokenizer.json were made from it
//! (tools/reference/make_gguf_tokenizer_reference.py).
//!
//! Scores: a SentencePiece BPE model scores each piece by when it was learnt; the fixture has the
//! merge list instead, so a piece's score is minus the rank of the first merge that forms it, and
//! pieces no merge forms (single characters) score below every merged piece.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln::model::gguf::writer::{string, strings, GgufWriter};
use kiln::model::gguf::MetaValue;
use serde_json::Value;

use super::{llama2_dir, read_json};

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FFN: usize = 128;
const VOCAB: usize = 32000;

/// llama.cpp's token types.
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const BYTE: i32 = 6;
const NORMAL: i32 = 1;

/// tests/data/cache/llama2/llama2-sentencepiece.gguf, written on first use.
pub fn llama2_sentencepiece_gguf() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = llama2_dir();
        let path = dir.join("llama2-sentencepiece.gguf");
        let source = dir.join("tokenizer.json");
        let fresh = |p: &Path| {
            let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            matches!((modified(p), modified(&source)), (Some(a), Some(b)) if a >= b)
        };
        if !fresh(&path) {
            let bytes = llama2_gguf_bytes(dir);
            // Test binaries may build it at the same time: each writes its own file and renames.
            let tmp = dir.join(format!(".llama2-sentencepiece.{}.gguf", std::process::id()));
            std::fs::write(&tmp, bytes).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        path
    })
}

fn llama2_gguf_bytes(dir: &Path) -> Vec<u8> {
    let tokenizer: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    let vocab = tokenizer["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (token, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = token.clone();
    }
    assert_eq!(tokens.len(), VOCAB);
    let id_of = |token: &str| vocab[token].as_u64().unwrap() as usize;

    let merges = tokenizer["model"]["merges"].as_array().unwrap();
    let mut scores = vec![f32::NAN; VOCAB];
    for (rank, merge) in merges.iter().enumerate() {
        let merged = match merge {
            Value::String(pair) => pair.replacen(' ', "", 1),
            Value::Array(pair) => format!("{}{}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap()),
            other => panic!("merge {other}"),
        };
        let id = id_of(&merged);
        if scores[id].is_nan() {
            scores[id] = -(rank as f32);
        }
    }
    let types: Vec<i32> = (0..VOCAB)
        .map(|id| match id {
            0 => UNKNOWN,
            1 | 2 => CONTROL,
            3..=258 => BYTE,
            _ => NORMAL,
        })
        .collect();
    for (id, score) in scores.iter_mut().enumerate() {
        if score.is_nan() {
            *score = if types[id] == NORMAL { -((merges.len() + id) as f32) } else { 0.0 };
        }
    }

    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let head_dim = HIDDEN / HEADS;
    let random = |seed: u64, rows: usize, cols: usize| -> Vec<f32> {
        kiln::testing::seeded_values(seed, rows * cols).iter().map(|v| v * 0.2).collect()
    };
    let norm = vec![1.0f32; HIDDEN];
    let dims = |rows: usize, cols: usize| [cols as u64, rows as u64];
    let writer = GgufWriter::new()
        .kv("general.architecture", string("llama"))
        .kv("general.name", string("kiln llama2 sentencepiece fixture"))
        .kv("llama.context_length", MetaValue::U32(4096))
        .kv("llama.embedding_length", MetaValue::U32(HIDDEN as u32))
        .kv("llama.feed_forward_length", MetaValue::U32(FFN as u32))
        .kv("llama.block_count", MetaValue::U32(1))
        .kv("llama.attention.head_count", MetaValue::U32(HEADS as u32))
        .kv("llama.attention.head_count_kv", MetaValue::U32(KV_HEADS as u32))
        .kv("llama.rope.dimension_count", MetaValue::U32(head_dim as u32))
        .kv("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(1e-5))
        .kv("llama.vocab_size", MetaValue::U32(VOCAB as u32))
        .kv("tokenizer.ggml.model", string("llama"))
        .kv("tokenizer.ggml.tokens", strings(&token_refs))
        .kv("tokenizer.ggml.scores", MetaValue::Array(scores.into_iter().map(MetaValue::F32).collect()))
        .kv("tokenizer.ggml.token_type", MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()))
        .kv("tokenizer.ggml.bos_token_id", MetaValue::U32(1))
        .kv("tokenizer.ggml.eos_token_id", MetaValue::U32(2))
        .kv("tokenizer.ggml.unknown_token_id", MetaValue::U32(0))
        .kv("tokenizer.ggml.add_bos_token", MetaValue::Bool(true))
        .kv("tokenizer.ggml.add_eos_token", MetaValue::Bool(false))
        .kv("tokenizer.chat_template", string(config["chat_template"].as_str().unwrap()))
        .f32_tensor("token_embd.weight", &dims(VOCAB, HIDDEN), &random(1, VOCAB, HIDDEN))
        .f32_tensor("blk.0.attn_norm.weight", &[HIDDEN as u64], &norm)
        .f32_tensor("blk.0.attn_q.weight", &dims(HIDDEN, HIDDEN), &random(2, HIDDEN, HIDDEN))
        .f32_tensor("blk.0.attn_k.weight", &dims(KV_HEADS * head_dim, HIDDEN), &random(3, KV_HEADS * head_dim, HIDDEN))
        .f32_tensor("blk.0.attn_v.weight", &dims(KV_HEADS * head_dim, HIDDEN), &random(4, KV_HEADS * head_dim, HIDDEN))
        .f32_tensor("blk.0.attn_output.weight", &dims(HIDDEN, HIDDEN), &random(5, HIDDEN, HIDDEN))
        .f32_tensor("blk.0.ffn_norm.weight", &[HIDDEN as u64], &norm)
        .f32_tensor("blk.0.ffn_gate.weight", &dims(FFN, HIDDEN), &random(6, FFN, HIDDEN))
        .f32_tensor("blk.0.ffn_up.weight", &dims(FFN, HIDDEN), &random(7, FFN, HIDDEN))
        .f32_tensor("blk.0.ffn_down.weight", &dims(HIDDEN, FFN), &random(8, HIDDEN, FFN))
        .f32_tensor("output_norm.weight", &[HIDDEN as u64], &norm)
        .f32_tensor("output.weight", &dims(VOCAB, HIDDEN), &random(9, VOCAB, HIDDEN));
    writer.to_bytes()
}

/// The llama.cpp reference for the fixture: `cases` of `{text, ids, decoded}`.
pub fn llama_cpp_reference() -> Value {
    read_json("tests/data/llama2_gguf_tokenizer.json")
}
