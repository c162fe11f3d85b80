//! The golden greedy cases of the default model (tests/data/smollm2_greedy.json; tests/data/README.md
//! says how they were made), shared by the tests that run them on different weight formats.

#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;

use kiln::backend::plan::PlanLimits;
use kiln::backend::Backend;
use kiln::engine::batch::run_batch;
use kiln::engine::core::{Engine, EngineConfig};
use kiln::engine::request::{FinishReason, RequestParams};
use kiln::engine::text::NoText;
use serde_json::Value;

pub fn golden() -> Value {
    serde_json::from_str(include_str!("../data/smollm2_greedy.json")).expect("golden file is valid JSON")
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("an id list").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

/// The serving engine with prefix caching, sized by the backend's plan limits, to be stepped on
/// this thread: the path every request of the server takes.
pub fn serving_engine(backend: Box<dyn Backend>, plan_limits: PlanLimits, max_waiting: usize) -> Engine {
    let config = EngineConfig {
        max_batch_tokens: plan_limits.max_batch_tokens,
        max_seqs: plan_limits.max_seqs,
        max_prefill_chunk: plan_limits.max_batch_tokens,
        max_waiting,
        prefix_caching: true,
        host_sampling: false,
    };
    Engine::new(backend, Arc::new(NoText), config)
}

/// Runs every case together in one batch (batching must not change anyone's tokens) and checks
/// each generates the recorded greedy ids, stopping at the end-of-sequence token where the
/// reference did and at the length limit otherwise.
pub fn assert_greedy_cases_match(backend: Box<dyn Backend>, plan_limits: PlanLimits) {
    let golden = golden();
    let stop_ids = ids(&golden["stop_ids"]);
    let cases = golden["cases"].as_array().expect("a case list");
    let requests: Vec<_> = cases
        .iter()
        .map(|case| {
            let params = RequestParams::greedy(ids(&case["generated_ids"]).len(), stop_ids.clone());
            (ids(&case["prompt_ids"]), params)
        })
        .collect();
    let mut engine = serving_engine(backend, plan_limits, requests.len());
    let outputs: Vec<_> =
        run_batch(&mut engine, &requests).expect("generation runs").into_iter().map(|mut c| c.remove(0)).collect();
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
