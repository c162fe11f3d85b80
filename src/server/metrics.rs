//! `GET /metrics`: the engine's and the server's counters in Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::engine::metrics::{EngineMetrics, Histogram, LATENCY_BUCKETS_S};

/// HTTP-level counters, by route and status.
#[derive(Default)]
pub struct ServerMetrics {
    responses: Mutex<BTreeMap<(String, u16), u64>>,
}

impl ServerMetrics {
    pub fn count_response(&self, route: &str, status: u16) {
        // A poisoned lock only means another thread panicked mid-increment; the map is still usable.
        let mut responses = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        *responses.entry((route.to_string(), status)).or_insert(0) += 1;
    }
}

/// Everything, `kiln_*` first, then the vLLM-named aliases (`metrics_aliases`) labelled with the
/// served model's name.
pub fn render(engine: &EngineMetrics, server: &ServerMetrics, model_name: &str) -> String {
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    };
    let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
    let get = EngineMetrics::get;
    counter(
        &mut out,
        "kiln_requests_total",
        "Generation requests accepted by the engine.",
        get(&engine.requests_total),
    );
    counter(
        &mut out,
        "kiln_requests_rejected_total",
        "Requests refused because the queue was full.",
        get(&engine.requests_rejected),
    );
    counter(
        &mut out,
        "kiln_requests_cancelled_total",
        "Requests cancelled (client gone).",
        get(&engine.requests_cancelled),
    );
    counter(&mut out, "kiln_prompt_tokens_total", "Prompt tokens received.", get(&engine.prompt_tokens_total));
    counter(&mut out, "kiln_generated_tokens_total", "Tokens generated.", get(&engine.generated_tokens_total));
    counter(&mut out, "kiln_steps_total", "Forward steps executed.", get(&engine.steps_total));
    counter(
        &mut out,
        "kiln_device_sampled_steps_total",
        "Forward steps whose tokens were sampled on the device.",
        get(&engine.device_sampled_steps_total),
    );
    counter(
        &mut out,
        "kiln_preemptions_total",
        "Sequences preempted for lack of KV blocks.",
        get(&engine.preemptions_total),
    );
    counter(
        &mut out,
        "kiln_prefix_cache_hit_tokens_total",
        "Prompt tokens found in the prefix cache instead of computed.",
        get(&engine.prefix_cache_hit_tokens_total),
    );
    gauge(&mut out, "kiln_queue_depth", "Requests waiting to start.", get(&engine.queue_depth));
    gauge(&mut out, "kiln_running_sequences", "Sequences in the running batch.", get(&engine.running_sequences));
    gauge(
        &mut out,
        "kiln_batch_tokens",
        "Tokens computed in the last step (batch occupancy).",
        get(&engine.last_step_tokens),
    );
    gauge(&mut out, "kiln_kv_blocks_used", "KV cache blocks in use.", get(&engine.kv_blocks_used));
    // Not `_total`: that suffix is for counters (promtool's lint), and this is a capacity.
    gauge(&mut out, "kiln_kv_blocks_capacity", "KV cache blocks in all.", get(&engine.kv_blocks_total));
    histogram(
        &mut out,
        "kiln_queue_time_seconds",
        "Time from submission to the first scheduled step.",
        &engine.queue_time,
    );
    histogram(
        &mut out,
        "kiln_time_to_first_token_seconds",
        "Time from submission to the first generated token.",
        &engine.time_to_first_token,
    );
    histogram(
        &mut out,
        "kiln_inter_token_latency_seconds",
        "Time between consecutive tokens of a sequence.",
        &engine.inter_token_latency,
    );
    histogram(&mut out, "kiln_step_seconds", "Duration of one forward step.", &engine.step_time);
    histogram(
        &mut out,
        "kiln_constraint_mask_seconds",
        "Time to work out one constrained sequence's allowed tokens (JSON mode, JSON schemas).",
        &engine.constraint_mask_time,
    );
    let _ = writeln!(out, "# HELP kiln_http_responses_total HTTP responses by route and status.\n# TYPE kiln_http_responses_total counter");
    let responses = server.responses.lock().unwrap_or_else(|p| p.into_inner());
    for ((route, status), count) in responses.iter() {
        let _ = writeln!(out, "kiln_http_responses_total{{route=\"{route}\",status=\"{status}\"}} {count}");
    }
    drop(responses);
    super::metrics_aliases::render_vllm_aliases(&mut out, engine, model_name);
    out
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    labelled_histogram(out, name, help, h, "");
}

/// A histogram whose samples carry `labels` (`key="value",` pairs, each followed by a comma, or
/// empty) before `le`.
pub(super) fn labelled_histogram(out: &mut String, name: &str, help: &str, h: &Histogram, labels: &str) {
    let (buckets, count, sum) = h.snapshot();
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, value) in LATENCY_BUCKETS_S.iter().zip(buckets) {
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {value}");
    }
    let plain = match labels.trim_end_matches(',') {
        "" => String::new(),
        pairs => format!("{{{pairs}}}"),
    };
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels}le=\"+Inf\"}} {count}\n{name}_sum{plain} {sum}\n{name}_count{plain} {count}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let engine = EngineMetrics::default();
        EngineMetrics::add(&engine.generated_tokens_total, 42);
        engine.time_to_first_token.observe(0.02);
        let server = ServerMetrics::default();
        server.count_response("/v1/chat/completions", 200);
        let text = render(&engine, &server, "m");
        assert!(text.contains("kiln_generated_tokens_total 42\n"));
        assert!(text.contains("kiln_time_to_first_token_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("kiln_time_to_first_token_seconds_bucket{le=\"0.01\"} 0\n"));
        assert!(text.contains("kiln_time_to_first_token_seconds_count 1\n"));
        assert!(text.contains("kiln_http_responses_total{route=\"/v1/chat/completions\",status=\"200\"} 1\n"));
    }
}
