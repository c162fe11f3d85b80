//! The same engine numbers under the names vLLM exports, for the dashboards, autoscalers and
//! inference-aware gateways that already read them (the Gateway API inference extension picks a
//! replica by `vllm:num_requests_waiting` and `vllm:kv_cache_usage_perc`). Each sample carries
//! vLLM's `model_name` label with the served model's name.
//!
//! Semantics follow vLLM's where kiln has the same quantity: "requests" running are sequences
//! (a request with `n` > 1 counts n), the KV cache usage is a fraction of blocks in use (0..1,
//! despite "perc"), and the latency histograms are kiln's own buckets.

use std::fmt::Write;

use super::metrics::labelled_histogram;
use crate::engine::metrics::EngineMetrics;

pub(super) fn render_vllm_aliases(out: &mut String, engine: &EngineMetrics, model_name: &str) {
    let get = EngineMetrics::get;
    let labels = format!("model_name=\"{}\",", escape_label_value(model_name));
    let selector = labels.trim_end_matches(',');
    let mut sample = |kind: &str, name: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{selector}}} {value}");
    };
    sample(
        "gauge",
        "vllm:num_requests_running",
        "Sequences in the running batch (kiln_running_sequences).",
        get(&engine.running_sequences) as f64,
    );
    sample(
        "gauge",
        "vllm:num_requests_waiting",
        "Requests waiting to start (kiln_queue_depth).",
        get(&engine.queue_depth) as f64,
    );
    let (used, total) = (get(&engine.kv_blocks_used), get(&engine.kv_blocks_total));
    let usage = if total == 0 { 0.0 } else { used as f64 / total as f64 };
    sample("gauge", "vllm:kv_cache_usage_perc", "KV cache usage as a fraction of blocks, 0 to 1.", usage);
    // The name gateways and dashboards written for vLLM before 0.10 read.
    sample("gauge", "vllm:gpu_cache_usage_perc", "KV cache usage as a fraction of blocks, 0 to 1 (older name).", usage);
    sample(
        "counter",
        "vllm:prompt_tokens_total",
        "Prompt tokens received (kiln_prompt_tokens_total).",
        get(&engine.prompt_tokens_total) as f64,
    );
    sample(
        "counter",
        "vllm:generation_tokens_total",
        "Tokens generated (kiln_generated_tokens_total).",
        get(&engine.generated_tokens_total) as f64,
    );
    labelled_histogram(
        out,
        "vllm:time_to_first_token_seconds",
        "Time from submission to the first generated token (kiln_time_to_first_token_seconds).",
        &engine.time_to_first_token,
        &labels,
    );
    labelled_histogram(
        out,
        "vllm:inter_token_latency_seconds",
        "Time between consecutive tokens of a sequence (kiln_inter_token_latency_seconds).",
        &engine.inter_token_latency,
        &labels,
    );
}

/// A label value as the Prometheus text format wants it: backslash, quote and newline escaped.
fn escape_label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_carry_the_model_name_and_kiln_s_values() {
        let engine = EngineMetrics::default();
        EngineMetrics::add(&engine.generated_tokens_total, 7);
        EngineMetrics::add(&engine.kv_blocks_used, 3);
        EngineMetrics::add(&engine.kv_blocks_total, 12);
        EngineMetrics::add(&engine.queue_depth, 2);
        engine.time_to_first_token.observe(0.02);
        let mut text = String::new();
        render_vllm_aliases(&mut text, &engine, "my \"model\"");
        let label = r#"model_name="my \"model\"""#;
        assert!(text.contains(&format!("vllm:generation_tokens_total{{{label}}} 7\n")), "{text}");
        assert!(text.contains(&format!("vllm:kv_cache_usage_perc{{{label}}} 0.25\n")), "{text}");
        assert!(text.contains(&format!("vllm:num_requests_waiting{{{label}}} 2\n")), "{text}");
        assert!(
            text.contains(&format!("vllm:time_to_first_token_seconds_bucket{{{label},le=\"0.025\"}} 1\n")),
            "{text}"
        );
        assert!(text.contains(&format!("vllm:time_to_first_token_seconds_count{{{label}}} 1\n")), "{text}");
    }
}
