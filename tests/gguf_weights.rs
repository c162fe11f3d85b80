//! The default model run straight from its original Q4_1 GGUF (weights kept quantized, integer dot
//! products in decode) generates the golden greedy tokens, as llama.cpp does on the same file.

mod golden_support;

use golden_support::assert_greedy_cases_match;
use kiln::launch::{load_cpu_backend_from_gguf, CpuLimits};
use kiln::model::weights::WeightFormat;

#[test]
fn quantized_gguf_generates_the_golden_tokens() {
    let home = kiln::model::pull::kiln_home().unwrap();
    let gguf = kiln::model::pull::pull_default_gguf_into(&home).expect("the default GGUF can be pulled");
    let limits = CpuLimits { kv_memory_bytes: 256 << 20, kv_max_tokens: None, max_batch_tokens: 256, max_seqs: 8 };
    let (backend, plan_limits) = load_cpu_backend_from_gguf(&gguf, limits).unwrap();
    assert_eq!(backend.weights().layers[0].q_proj.format.name(), "q4_1");
    assert_eq!(backend.weights().lm_head.format.name(), "q8_0");
    assert!(matches!(backend.weights().embed_tokens.format, WeightFormat::Packed(_)));

    assert_greedy_cases_match(Box::new(backend), plan_limits);
}
