//! Structured outputs through the official OpenAI Python SDK against `kiln serve` (the real
//! binary, the default model): runs tests/structured_outputs/test_structured_outputs.py, which
//! samples hundreds of generations per schema feature and validates each with the `jsonschema`
//! package, in the SDK venv that tools/setup-python-tests makes.

mod serve_support;

use std::path::Path;
use std::process::Command;

use serve_support::serve;

#[test]
fn sampled_outputs_validate_against_their_schemas() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let setup = Command::new(root.join("tools/setup-python-tests")).status().expect("running tools/setup-python-tests");
    assert!(setup.success(), "tools/setup-python-tests failed: it needs python3 with venv and pip");
    // Twelve requests of four choices at once.
    let served = serve(&[], &["--max-seqs", "48", "--kv-memory", "0.5", "--max-batch-tokens", "256"], &[]);
    let output = Command::new(root.join(".venv-sdk/bin/python"))
        .arg(root.join("tests/structured_outputs/test_structured_outputs.py"))
        .env("KILN_BASE_URL", format!("http://{}/v1", served.addr))
        .output()
        .expect("running the structured-output tests");
    eprintln!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the structured-output tests failed (output above)");
}
