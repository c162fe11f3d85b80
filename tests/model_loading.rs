//! Loading Hugging Face directories: sharded safetensors with an index, every weight dtype, and
//! one clear error naming the file for each way a model directory can be broken.

use std::collections::HashMap;
use std::path::Path;

use half::{bf16, f16};
use kiln::backend::cpu::CpuBackend;
use kiln::backend::plan::{PlanLimits, StepPlan};
use kiln::backend::{Backend, KvLayout};
use kiln::model::weights::LlamaWeights;
use kiln::model::{ModelConfig, ModelError};
use kiln::testing::{assert_close, seeded_values, Tolerance};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

const CONFIG: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,
    "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":64,"rms_norm_eps":1e-5,"max_position_embeddings":128,
    "tie_word_embeddings":false,"eos_token_id":2}"#;

/// Every tensor of the test model as (name, shape, values).
fn tensors(config: &ModelConfig) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let (h, i, q, kv, v) =
        (config.hidden_size, config.intermediate_size, config.q_dim(), config.kv_dim(), config.vocab_size);
    let mut list = vec![
        ("model.embed_tokens.weight".to_string(), vec![v, h]),
        ("model.norm.weight".into(), vec![h]),
        ("lm_head.weight".into(), vec![v, h]),
    ];
    for l in 0..config.num_layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
        ] {
            list.push((format!("{p}.{name}"), shape));
        }
    }
    list.into_iter()
        .enumerate()
        .map(|(n, (name, shape))| {
            let len = shape.iter().product();
            let scale = if shape.len() == 1 { 0.1 } else { 0.3 };
            let values = seeded_values(1000 + n as u64, len)
                .into_iter()
                .map(|x| if shape.len() == 1 { 1.0 + x * scale } else { x * scale })
                .collect();
            (name, shape, values)
        })
        .collect()
}

fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
        other => panic!("no test encoding for {other:?}"),
    }
}

/// Writes the model into `dir` in `shards` files (with an index when more than one).
fn write_model(dir: &Path, dtype: Dtype, shards: usize) {
    std::fs::write(dir.join("config.json"), CONFIG).unwrap();
    let config = ModelConfig::from_dir(dir).unwrap();
    let all = tensors(&config);
    let bytes: Vec<Vec<u8>> = all.iter().map(|(_, _, v)| encode(v, dtype)).collect();
    let mut weight_map = HashMap::new();
    for shard in 0..shards {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", shard + 1)
        };
        let views: Vec<(String, TensorView)> = all
            .iter()
            .zip(&bytes)
            .enumerate()
            .filter(|(n, _)| n % shards == shard)
            .map(|(_, ((name, shape, _), data))| {
                weight_map.insert(name.clone(), file.clone());
                (name.clone(), TensorView::new(dtype, shape.clone(), data).unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
    }
    if shards > 1 {
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
}

fn logits_of(dir: &Path) -> Vec<f32> {
    let config = ModelConfig::from_dir(dir).unwrap();
    let weights = LlamaWeights::load(dir, &config).unwrap();
    let limits = PlanLimits { max_batch_tokens: 16, max_seqs: 1, max_blocks_per_seq: 8 };
    let mut backend = CpuBackend::new(config, weights, KvLayout { block_size: 16, num_blocks: 8 }, limits);
    let mut plan = StepPlan::new(limits, 16);
    plan.push_sequence(&[1, 5, 9, 33, 60], 0, &[0], true).unwrap();
    let mut logits = vec![f32::NAN; 64];
    backend.execute(&plan, &mut logits).unwrap();
    logits
}

#[test]
fn sharded_and_single_files_load_the_same_model_in_every_dtype() {
    let single = tempfile::tempdir().unwrap();
    write_model(single.path(), Dtype::F32, 1);
    let reference = logits_of(single.path());
    for (dtype, shards, tolerance) in [(Dtype::F32, 3, 1e-6), (Dtype::F16, 2, 2e-2), (Dtype::BF16, 1, 1e-1)] {
        let dir = tempfile::tempdir().unwrap();
        write_model(dir.path(), dtype, shards);
        assert_close(&logits_of(dir.path()), &reference, Tolerance { atol: tolerance, rtol: tolerance });
    }
}

fn load_error(dir: &Path) -> ModelError {
    let config = match ModelConfig::from_dir(dir) {
        Ok(config) => config,
        Err(e) => return e,
    };
    match LlamaWeights::load(dir, &config) {
        Ok(_) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn broken_model_directories_give_one_clear_error_naming_the_file() {
    // A missing tensor.
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), Dtype::F16, 2);
    let index_path = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    // Point the index at a shard that is not there.
    index["weight_map"]["lm_head.weight"] = "model-missing.safetensors".into();
    std::fs::write(&index_path, index.to_string()).unwrap();
    let err = load_error(dir.path()).to_string();
    assert!(err.contains("model-missing.safetensors") && err.contains("missing"), "{err}");

    // A truncated weights file.
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), Dtype::F16, 1);
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    let err = load_error(dir.path()).to_string();
    assert!(err.contains("model.safetensors") && err.contains("not a valid safetensors file"), "{err}");

    // A tensor of the wrong shape (a config that disagrees with the weights).
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), Dtype::F16, 1);
    std::fs::write(
        dir.path().join("config.json"),
        CONFIG.replace("\"intermediate_size\":48", "\"intermediate_size\":40"),
    )
    .unwrap();
    let err = load_error(dir.path()).to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("mlp.gate_proj.weight") && err.contains("expected [40, 32]"),
        "{err}"
    );

    // A tensor that is not there at all.
    let dir = tempfile::tempdir().unwrap();
    write_model(dir.path(), Dtype::F16, 1);
    std::fs::write(
        dir.path().join("config.json"),
        CONFIG.replace("\"num_hidden_layers\":2", "\"num_hidden_layers\":3"),
    )
    .unwrap();
    let err = load_error(dir.path()).to_string();
    assert!(err.contains("missing tensor `model.layers.2.input_layernorm.weight`"), "{err}");

    // No weights at all, and an unknown architecture.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), CONFIG).unwrap();
    assert!(load_error(dir.path()).to_string().contains("no *.safetensors weight files"));
    std::fs::write(dir.path().join("config.json"), CONFIG.replace("LlamaForCausalLM", "FalconForCausalLM")).unwrap();
    let err = ModelConfig::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("unsupported architecture `FalconForCausalLM`"), "{err}");
}
