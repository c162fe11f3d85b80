//! The official OpenAI Python SDK against `kiln serve` (the real binary, the default model):
//! runs tests/openai_sdk/test_openai_sdk.py in the SDK venv that tools/setup-python-tests makes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn openai_python_sdk_works_unchanged() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let setup = Command::new(root.join("tools/setup-python-tests")).status().expect("running tools/setup-python-tests");
    assert!(setup.success(), "tools/setup-python-tests failed: it needs python3 with venv and pip");
    let mut server = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["serve", "--port", "0", "--kv-memory", "0.25", "--max-seqs", "8"])
        .env("KILN_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting kiln serve");
    let stderr = server.stderr.take().expect("stderr is piped");
    let server = KillOnDrop(server);
    // The server logs its address, then "serving ..." once the model is ready.
    let mut lines = BufReader::new(stderr).lines();
    let mut address = None;
    for line in lines.by_ref() {
        let line = line.expect("reading the server log");
        eprintln!("server: {line}");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            address = rest.split_whitespace().next().map(str::to_string);
        }
        if line.contains("serving ") {
            break;
        }
    }
    let address = address.expect("the server logged its address");
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let output = Command::new(root.join(".venv-sdk/bin/python"))
        .arg(root.join("tests/openai_sdk/test_openai_sdk.py"))
        .env("KILN_BASE_URL", format!("http://{address}/v1"))
        .output()
        .expect("running the SDK tests");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the OpenAI SDK tests failed (output above)");
    drop(server);
}
