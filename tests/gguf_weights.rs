//! The default model run straight from its original Q4_1 GGUF (weights kept quantized, integer dot
//! products in decode) generates the golden greedy tokens, as llama.cpp does on the same file.

use kiln::engine::generate::{FinishReason, GenerationRequest, Generator};
use kiln::engine::sampler::SamplingParams;
use kiln::launch::{load_cpu_backend_from_gguf, CpuLimits};
use kiln::model::weights::WeightFormat;
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("an id list").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

#[test]
fn quantized_gguf_generates_the_golden_tokens() {
    let home = kiln::model::pull::kiln_home().unwrap();
    let gguf = kiln::model::pull::pull_default_gguf_into(&home).expect("the default GGUF can be pulled");
    let limits = CpuLimits { kv_memory_bytes: 256 << 20, kv_max_tokens: None, max_batch_tokens: 256, max_seqs: 8 };
    let (backend, plan_limits) = load_cpu_backend_from_gguf(&gguf, limits).unwrap();
    assert_eq!(backend.weights().layers[0].q_proj.format.name(), "q4_1");
    assert_eq!(backend.weights().lm_head.format.name(), "q8_0");
    assert!(matches!(backend.weights().embed_tokens.format, WeightFormat::Packed(_)));

    let golden: Value = serde_json::from_str(include_str!("data/smollm2_greedy.json")).unwrap();
    let stop_ids = ids(&golden["stop_ids"]);
    let cases = golden["cases"].as_array().unwrap();
    let requests: Vec<GenerationRequest> = cases
        .iter()
        .map(|case| GenerationRequest {
            prompt_ids: ids(&case["prompt_ids"]),
            max_new_tokens: ids(&case["generated_ids"]).len(),
            sampling: SamplingParams::greedy(),
            stop_token_ids: stop_ids.clone(),
        })
        .collect();
    let mut generator = Generator::new(Box::new(backend), plan_limits);
    let outputs = generator.generate(&requests, |_, _| {}).unwrap();
    for (case, output) in cases.iter().zip(&outputs) {
        let mut expected = ids(&case["generated_ids"]);
        if case["ends_with_eos"].as_bool().unwrap() {
            expected.pop();
            assert_eq!(output.finish_reason, FinishReason::Stop, "{}", case["name"]);
        }
        assert_eq!(output.token_ids, expected, "{}: {}", case["name"], case["generated_text"]);
    }
}
