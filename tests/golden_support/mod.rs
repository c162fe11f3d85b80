//! The golden greedy cases of the default model (tests/data/smollm2_greedy.json; tests/data/README.md
//! says how they were made), shared by the tests that run them on different weight formats.

use kiln::backend::Backend;
use kiln::engine::generate::{FinishReason, GenerationRequest, Generator};
use kiln::engine::plan::PlanLimits;
use kiln::engine::sampler::SamplingParams;
use serde_json::Value;

pub fn golden() -> Value {
    serde_json::from_str(include_str!("../data/smollm2_greedy.json")).expect("golden file is valid JSON")
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("an id list").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

/// Runs every case together in one batch (batching must not change anyone's tokens) and checks
/// each generates the recorded greedy ids, stopping at the end-of-sequence token where the
/// reference did and at the length limit otherwise.
pub fn assert_greedy_cases_match(backend: Box<dyn Backend>, plan_limits: PlanLimits) {
    let golden = golden();
    let stop_ids = ids(&golden["stop_ids"]);
    let cases = golden["cases"].as_array().expect("a case list");
    let requests: Vec<GenerationRequest> = cases
        .iter()
        .map(|case| GenerationRequest {
            prompt_ids: ids(&case["prompt_ids"]),
            max_new_tokens: ids(&case["generated_ids"]).len(),
            sampling: SamplingParams::greedy(),
            stop_token_ids: stop_ids.clone(),
        })
        .collect();
    let mut generator = Generator::new(backend, plan_limits);
    let outputs = generator.generate(&requests, |_, _| {}).expect("generation runs");
    for (case, output) in cases.iter().zip(&outputs) {
        let mut expected = ids(&case["generated_ids"]);
        if case["ends_with_eos"].as_bool().expect("ends_with_eos is a bool") {
            assert!(stop_ids.contains(&expected.pop().expect("a generated id")));
            assert_eq!(output.finish_reason, FinishReason::Stop, "{}", case["name"]);
        } else {
            assert_eq!(output.finish_reason, FinishReason::Length, "{}", case["name"]);
        }
        assert_eq!(output.token_ids, expected, "{}: {}", case["name"], case["generated_text"]);
    }
}
