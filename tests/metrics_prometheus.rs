//! `/metrics` after real traffic is accepted by Prometheus's own linter (`promtool check metrics`,
//! from Debian's prometheus package, installed by tools/setup-system-packages), `kiln_*` and the
//! vLLM-named aliases alike, and the aliases carry the same values as kiln's own names.

mod serve_support;

use std::io::Write;
use std::process::{Command, Stdio};

use serve_support::{request, serve, setup_system_packages, MODEL};

/// promtool's exit status and its remarks, one per line.
fn promtool_check(text: &str) -> (std::process::ExitStatus, Vec<String>) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status, said.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

/// The value of the sample `name{labels}` (exact text before the value).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn metrics_pass_promtool_and_alias_kiln_s_numbers() {
    setup_system_packages();
    let served = serve(&[], &[], &[]);
    let body =
        format!(r#"{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "Say hi"}}], "max_tokens": 6}}"#);
    let (status, reply) = request(served.addr, "POST", "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{reply}");
    let (status, text) = request(served.addr, "GET", "/metrics", "");
    assert_eq!(status, 200);

    // promtool's lint reserves ':' for recording rules; vLLM's names have it, and the dashboards
    // and gateways that read them need them spelled so. That one remark, on those names only, is
    // accepted; anything else (a parse error, any other lint) fails.
    let (status, remarks) = promtool_check(&text);
    let unexpected: Vec<&str> = remarks
        .iter()
        .map(String::as_str)
        .filter(|line| !(line.starts_with("vllm:") && line.ends_with("metric names should not contain ':'")))
        .collect();
    assert!(unexpected.is_empty(), "promtool check metrics ({status}):\n{}", remarks.join("\n"));
    let aliases = remarks.len();
    assert!(aliases >= 7, "the vllm: aliases are all there: {remarks:?}");
    // kiln's own names alone pass without a remark.
    let own: String = text.lines().filter(|l| !l.contains("vllm:")).map(|l| format!("{l}\n")).collect();
    let (status, remarks) = promtool_check(&own);
    assert!(status.success() && remarks.is_empty(), "promtool on kiln_* ({status}): {remarks:?}");

    let label = format!("{{model_name=\"{MODEL}\"}}");
    let generated = sample(&text, "kiln_generated_tokens_total");
    assert!(generated >= 1.0);
    assert_eq!(sample(&text, &format!("vllm:generation_tokens_total{label}")), generated);
    assert_eq!(sample(&text, &format!("vllm:prompt_tokens_total{label}")), sample(&text, "kiln_prompt_tokens_total"));
    assert_eq!(sample(&text, &format!("vllm:num_requests_waiting{label}")), sample(&text, "kiln_queue_depth"));
    assert_eq!(sample(&text, &format!("vllm:num_requests_running{label}")), sample(&text, "kiln_running_sequences"));
    let usage = sample(&text, &format!("vllm:kv_cache_usage_perc{label}"));
    let blocks = sample(&text, "kiln_kv_blocks_used") / sample(&text, "kiln_kv_blocks_capacity");
    assert!((usage - blocks).abs() < 1e-12 && (0.0..=1.0).contains(&usage), "{usage} vs {blocks}");
    assert_eq!(
        sample(&text, &format!("vllm:time_to_first_token_seconds_count{label}")),
        sample(&text, "kiln_time_to_first_token_seconds_count")
    );
    assert_eq!(
        sample(&text, &format!("vllm:inter_token_latency_seconds_count{label}")),
        sample(&text, "kiln_inter_token_latency_seconds_count")
    );
}
