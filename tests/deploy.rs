//! The deployment files in deploy/ (Dockerfiles, systemd unit, Kubernetes manifests) checked
//! without a container runtime, an init system or a cluster: the manifests against the Kubernetes
//! schemas (kubernetes-validate, offline), the unit with `systemd-analyze verify`, the Dockerfiles
//! with hadolint, and the rules docs/deployment.md states (stop timeouts above the drain, probes on
//! the endpoints kiln serves, autoscaling on a metric kiln exports) read from the files themselves.
//! The tools come from tools/setup-deploy-tests (.venv-deploy, pinned in tests/deploy/requirements.txt).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Where kiln keeps its model cache in every deployment file (KILN_HOME).
const KILN_HOME: &str = "/var/lib/kiln";
/// The Kubernetes versions the manifests are validated against: the oldest they are written for
/// (the preStop `sleep` action is on by default from 1.30) and the newest kubernetes-validate ships.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30", "1.37"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Installs the pinned tools once (quiet and quick when they are there); a missing tool fails the
/// test here, with the reason, rather than letting a check pass unrun.
fn setup() -> PathBuf {
    let status =
        Command::new(root().join("tools/setup-deploy-tests")).status().expect("running tools/setup-deploy-tests");
    assert!(
        status.success(),
        "tools/setup-deploy-tests failed: it needs python3 with venv and pip, PyPI, and systemd-analyze \
         (Debian's systemd package)"
    );
    root().join(".venv-deploy/bin")
}

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    eprintln!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    output
}

/// Every object of deploy/kubernetes/*.yaml as (file name, object), read by PyYAML in the venv.
fn manifests() -> Vec<(String, Value)> {
    let bin = setup();
    let output = Command::new(bin.join("python"))
        .args(["tests/deploy/validate_manifests.py", "json", "deploy/kubernetes"])
        .current_dir(root())
        .output()
        .expect("running tests/deploy/validate_manifests.py json");
    assert!(output.status.success(), "reading the manifests failed: {}", String::from_utf8_lossy(&output.stderr));
    let list: Vec<Value> = serde_json::from_slice(&output.stdout).expect("validate_manifests.py prints JSON");
    list.into_iter()
        .map(|item| (item["file"].as_str().expect("a file name").to_string(), item["object"].clone()))
        .collect()
}

fn objects_of_kind<'a>(manifests: &'a [(String, Value)], kind: &str) -> Vec<&'a (String, Value)> {
    let found: Vec<_> = manifests.iter().filter(|(_, object)| object["kind"] == kind).collect();
    assert!(!found.is_empty(), "deploy/kubernetes has no {kind}");
    found
}

/// The value that follows `flag` in an argument list (`--flag value`), as a number.
fn flag_seconds(args: &[&str], flag: &str, what: &str) -> u64 {
    let position = args.iter().position(|arg| *arg == flag).unwrap_or_else(|| {
        panic!("{what} does not pass {flag}: state it, so the stop timeout can be checked against it")
    });
    let value = args.get(position + 1).unwrap_or_else(|| panic!("{what}: {flag} without a value"));
    value.parse().unwrap_or_else(|_| panic!("{what}: {flag} {value} is not a whole number of seconds"))
}

/// The container named `kiln` of a Deployment.
fn kiln_container<'a>(file: &str, deployment: &'a Value) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|containers| containers.iter().find(|c| c["name"] == "kiln"))
        .unwrap_or_else(|| panic!("{file}: no container named kiln"))
}

fn string_list(value: &Value) -> Vec<&str> {
    value.as_array().map(|items| items.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    let bin = setup();
    let output = run(Command::new(bin.join("python"))
        .args(["tests/deploy/validate_manifests.py", "validate", "deploy/kubernetes"])
        .args(KUBERNETES_VERSIONS)
        .current_dir(root()));
    assert!(output.status.success(), "a manifest in deploy/kubernetes does not validate (the FAIL lines above)");
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    setup();
    // verify insists that ExecStart's binary exists: the unit names /usr/local/bin/kiln, where an
    // operator installs it, so the checked copy names the binary this test suite built instead.
    let unit = read("deploy/kiln.service");
    let installed = "ExecStart=/usr/local/bin/kiln serve ";
    assert_eq!(unit.matches(installed).count(), 1, "deploy/kiln.service must start /usr/local/bin/kiln serve once");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let copy = dir.path().join("kiln.service");
    let built = format!("ExecStart={} serve ", env!("CARGO_BIN_EXE_kiln"));
    std::fs::write(&copy, unit.replace(installed, &built)).expect("writing the unit's copy");
    let output = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    // verify exits 0 on an unknown key or a value it cannot parse (it ignores that line), so any
    // message fails the test too.
    let messages = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success() && messages.trim().is_empty(),
        "systemd-analyze verify rejects deploy/kiln.service or warns about it (above)"
    );
}

#[test]
fn systemd_unit_drains_restarts_and_is_hardened() {
    let unit = read("deploy/kiln.service");
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with('['))
        .filter_map(|line| line.split_once('='))
        .collect();
    let optional = |key: &str| settings.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let value = |key: &str| optional(key).unwrap_or_else(|| panic!("deploy/kiln.service has no {key}="));
    let exec_start: Vec<&str> = value("ExecStart").split_whitespace().collect();
    let drain = flag_seconds(&exec_start, "--shutdown-timeout", "deploy/kiln.service ExecStart");
    let stop: u64 =
        value("TimeoutStopSec").trim_end_matches('s').parse().expect("TimeoutStopSec is a whole number of seconds");
    assert!(
        stop > drain,
        "TimeoutStopSec={stop} must exceed --shutdown-timeout {drain}: systemd would SIGKILL a drain"
    );
    assert_eq!(value("KillSignal"), "SIGTERM", "SIGTERM starts kiln's drain");
    assert_eq!(value("Restart"), "on-failure", "a failed engine exits non-zero and needs a restart; a drain exits 0");
    assert!(exec_start.contains(&"serve"), "ExecStart runs `kiln serve`");
    let environment: Vec<&str> = settings.iter().filter(|(k, _)| *k == "Environment").map(|(_, v)| *v).collect();
    assert!(environment.contains(&format!("KILN_HOME={KILN_HOME}").as_str()), "Environment=KILN_HOME={KILN_HOME}");
    assert_eq!(value("StateDirectory"), "kiln", "the model cache is the unit's state directory, {KILN_HOME}");
    assert_eq!(value("ReadWritePaths"), KILN_HOME, "the model cache is the only writable path");
    assert!(
        optional("DynamicUser") == Some("yes") || optional("User").is_some_and(|user| user != "root" && user != "0"),
        "kiln runs as a user of its own (DynamicUser=yes or User=)"
    );
    for (key, wanted) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(value(key), wanted, "deploy/kiln.service: {key}");
    }
}

#[test]
fn dockerfiles_pass_hadolint() {
    let bin = setup();
    let output = run(Command::new(bin.join("hadolint"))
        .args(["--no-color", "deploy/Dockerfile.cpu", "deploy/Dockerfile.cuda"])
        .current_dir(root()));
    assert!(output.status.success(), "hadolint finds problems in deploy/Dockerfile.* (above)");
}

/// A Dockerfile as (INSTRUCTION, arguments), continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (instruction, arguments) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
        out.push((instruction.to_uppercase(), arguments.trim().to_string()));
        current.clear();
    }
    out
}

/// An exec-form (JSON array) argument such as ENTRYPOINT's.
fn exec_form(file: &str, instruction: &str, arguments: &str) -> Vec<String> {
    serde_json::from_str(arguments).unwrap_or_else(|_| panic!("{file}: {instruction} must be in exec (JSON) form"))
}

/// The checks on one Dockerfile; returns its final stage's base image.
fn check_dockerfile(file: &str) -> String {
    let all = instructions(&read(file));
    let stage_starts: Vec<usize> = all.iter().enumerate().filter(|(_, (i, _))| i == "FROM").map(|(n, _)| n).collect();
    assert!(stage_starts.len() >= 2, "{file}: multi-stage, a build stage and a runtime stage");
    for &start in &stage_starts {
        let image = all[start].1.split_whitespace().find(|word| !word.starts_with("--")).expect("FROM names an image");
        let name = image.rsplit('/').next().expect("an image name");
        let tag = name.split_once(':').map(|(_, tag)| tag);
        assert!(
            image.contains("@sha256:") || tag.is_some_and(|tag| tag != "latest"),
            "{file}: FROM {image} must be pinned by a tag other than latest"
        );
    }
    let last = &all[*stage_starts.last().expect("a stage")..];
    let in_final = |instruction: &str| -> Vec<&str> {
        last.iter().filter(|(i, _)| i == instruction).map(|(_, arguments)| arguments.as_str()).collect()
    };
    let user =
        *in_final("USER").last().unwrap_or_else(|| panic!("{file}: the runtime stage sets no USER (runs as root)"));
    let uid = user.split(':').next().expect("a user");
    assert!(uid != "root" && uid != "0", "{file}: the runtime stage runs as {user}, not as a non-root user");
    assert!(
        in_final("ENV").iter().any(|env| env.split_whitespace().any(|word| word == format!("KILN_HOME={KILN_HOME}"))),
        "{file}: ENV KILN_HOME={KILN_HOME} in the runtime stage"
    );
    assert!(
        in_final("VOLUME").iter().any(|volume| volume.contains(&format!("\"{KILN_HOME}\""))),
        "{file}: VOLUME [\"{KILN_HOME}\"], the model cache"
    );
    assert!(
        in_final("COPY").iter().any(|copy| copy.starts_with("--from=") && copy.ends_with("/usr/local/bin/kiln")),
        "{file}: the runtime stage copies the built binary to /usr/local/bin/kiln"
    );
    let entrypoint = exec_form(file, "ENTRYPOINT", in_final("ENTRYPOINT").last().expect("an ENTRYPOINT"));
    assert_eq!(entrypoint[..4], ["/usr/local/bin/kiln", "serve", "--host", "0.0.0.0"], "{file}: ENTRYPOINT");
    let cmd = exec_form(file, "CMD", in_final("CMD").last().expect("a CMD with the port"));
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let port = flag_seconds(&cmd, "--port", &format!("{file} CMD"));
    assert_eq!(in_final("EXPOSE"), [port.to_string()], "{file}: EXPOSE the port CMD passes");
    last.iter().find(|(i, _)| i == "FROM").expect("the final FROM").1.clone()
}

#[test]
fn dockerfiles_follow_the_deployment_rules() {
    check_dockerfile("deploy/Dockerfile.cpu");
    let cuda_base = check_dockerfile("deploy/Dockerfile.cuda");
    // The runtime image's CUDA is the nvcc's that compiled the kernels (cuda/requirements.txt).
    let nvcc = read("cuda/requirements.txt")
        .lines()
        .find_map(|line| line.strip_prefix("nvidia-cuda-nvcc=="))
        .and_then(|version| version.split_whitespace().next())
        .map(|version| version.split('.').take(2).collect::<Vec<_>>().join("."))
        .expect("cuda/requirements.txt pins nvidia-cuda-nvcc");
    let tag = cuda_base
        .strip_prefix("nvidia/cuda:")
        .unwrap_or_else(|| panic!("Dockerfile.cuda runs on nvidia/cuda, not {cuda_base}"));
    assert!(
        tag.starts_with(&format!("{nvcc}.")),
        "Dockerfile.cuda's base {cuda_base} is not CUDA {nvcc}, nvcc's version"
    );
    // Dockerfile.cuda ships no NVRTC and no CUDA runtime library: that holds while kiln only loads
    // prebuilt fatbins (cudarc's nvrtc module for its Ptx type, Ptx::from_binary) and compiles nothing.
    let mut sources = vec![root().join("src")];
    while let Some(path) = sources.pop() {
        if path.is_dir() {
            sources.extend(
                std::fs::read_dir(&path).expect("reading src/").map(|entry| entry.expect("a directory entry").path()),
            );
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("reading a source file");
            for line in text.lines().filter(|line| line.contains("nvrtc") || line.contains("Ptx::")) {
                assert!(
                    line.trim() == "use cudarc::nvrtc::Ptx;" || line.contains("Ptx::from_binary"),
                    "{}: `{}`: kiln uses NVRTC or loads PTX text now; Dockerfile.cuda must ship NVRTC",
                    path.display(),
                    line.trim()
                );
            }
        }
    }
}

#[test]
fn kubernetes_stop_timeouts_cover_the_drain() {
    let manifests = manifests();
    for (file, deployment) in objects_of_kind(&manifests, "Deployment") {
        let container = kiln_container(file, deployment);
        let drain =
            flag_seconds(&string_list(&container["args"]), "--shutdown-timeout", &format!("{file}: kiln's args"));
        let pre_stop = &container["lifecycle"]["preStop"];
        let pause = pre_stop["sleep"]["seconds"]
            .as_u64()
            .unwrap_or_else(|| panic!("{file}: kiln has no preStop sleep: endpoints may still send after SIGTERM"));
        let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or_else(|| panic!("{file}: no terminationGracePeriodSeconds (the default, 30 s, cuts the drain)"));
        assert!(
            grace > pause + drain,
            "{file}: terminationGracePeriodSeconds {grace} must exceed preStop {pause} s + --shutdown-timeout {drain} s"
        );
    }
}

#[test]
fn kubernetes_probes_use_the_endpoints_kiln_serves() {
    let manifests = manifests();
    // The route table: each probed path must be one of its GET routes.
    let routes = read("src/server/routes.rs");
    let served = |path: &str| {
        routes.lines().any(|line| line.trim_start().starts_with("(\"GET\",") && line.contains(&format!("\"{path}\"")))
    };
    let services = objects_of_kind(&manifests, "Service");
    for (file, deployment) in objects_of_kind(&manifests, "Deployment") {
        let container = kiln_container(file, deployment);
        let port = flag_seconds(&string_list(&container["args"]), "--port", &format!("{file}: kiln's args"));
        let port_name = container["ports"]
            .as_array()
            .and_then(|ports| ports.iter().find(|p| p["containerPort"] == port))
            .and_then(|p| p["name"].as_str())
            .unwrap_or_else(|| panic!("{file}: no named containerPort {port}, the port kiln listens on"));
        for (probe, path) in
            [("startupProbe", "/health/ready"), ("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live")]
        {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{file}: {probe} must ask {path}");
            assert!(get["port"] == port_name || get["port"] == port, "{file}: {probe} must ask kiln's port");
            assert!(served(path), "src/server/routes.rs has no GET {path} route, which {file}'s {probe} asks");
        }
        for (service_file, service) in &services {
            let ports = service["spec"]["ports"].as_array().expect("a Service has ports");
            assert!(
                ports.iter().all(|p| p["targetPort"] == port_name || p["targetPort"] == port),
                "{service_file}: targetPort must be {file}'s kiln port"
            );
        }
        let security = &deployment["spec"]["template"]["spec"]["securityContext"];
        assert_eq!(security["runAsNonRoot"], true, "{file}: runAsNonRoot");
        let image = container["image"].as_str().expect("an image");
        let dockerfile = if image.ends_with("-cuda") { "deploy/Dockerfile.cuda" } else { "deploy/Dockerfile.cpu" };
        let user = instructions(&read(dockerfile)).into_iter().rfind(|(i, _)| i == "USER").expect("a USER").1;
        assert_eq!(
            security["runAsUser"].to_string(),
            user.split(':').next().expect("a uid"),
            "{file}: runAsUser is {dockerfile}'s USER"
        );
        let env = container["env"].as_array().expect("kiln's env");
        assert!(
            env.iter().any(|e| e["name"] == "KILN_HOME" && e["value"] == KILN_HOME),
            "{file}: KILN_HOME={KILN_HOME}"
        );
        assert!(
            container["volumeMounts"]
                .as_array()
                .is_some_and(|mounts| mounts.iter().any(|m| m["mountPath"] == KILN_HOME)),
            "{file}: the model volume is mounted at KILN_HOME"
        );
    }
    let service_ports: Vec<&Value> =
        services.iter().flat_map(|(_, s)| s["spec"]["ports"].as_array().expect("a Service has ports")).collect();
    for (file, monitor) in objects_of_kind(&manifests, "ServiceMonitor") {
        for endpoint in monitor["spec"]["endpoints"].as_array().expect("endpoints") {
            let path = endpoint["path"].as_str().unwrap_or("/metrics");
            assert!(served(path), "{file}: src/server/routes.rs has no GET {path}");
            assert!(
                service_ports.iter().any(|p| p["name"] == endpoint["port"]),
                "{file}: port must be a Service port's name"
            );
        }
    }
}

#[test]
fn gpu_deployment_asks_for_one_gpu() {
    let manifests = manifests();
    let (file, deployment) =
        manifests.iter().find(|(file, _)| file == "deployment-gpu.yaml").expect("deployment-gpu.yaml");
    let container = kiln_container(file, deployment);
    assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], 1, "{file}: limits nvidia.com/gpu: 1");
    assert!(container["image"].as_str().is_some_and(|image| image.ends_with("-cuda")), "{file}: the CUDA image");
}

#[test]
fn autoscaler_scales_on_a_metric_kiln_exports() {
    let manifests = manifests();
    let metrics_source = read("src/server/metrics.rs");
    let deployments: Vec<&Value> = objects_of_kind(&manifests, "Deployment").into_iter().map(|(_, d)| d).collect();
    for (file, hpa) in objects_of_kind(&manifests, "HorizontalPodAutoscaler") {
        let target = &hpa["spec"]["scaleTargetRef"];
        assert!(
            target["kind"] == "Deployment" && deployments.iter().all(|d| d["metadata"]["name"] == target["name"]),
            "{file}: scaleTargetRef must name the Deployment"
        );
        let metrics = hpa["spec"]["metrics"].as_array().expect("metrics");
        assert!(!metrics.is_empty(), "{file}: no metric");
        for metric in metrics {
            assert_eq!(metric["type"], "Pods", "{file}: scale on a per-pod kiln metric (queue depth)");
            let name = metric["pods"]["metric"]["name"].as_str().expect("a metric name");
            assert!(
                metrics_source.contains(&format!("\"{name}\"")),
                "{file}: kiln's /metrics (src/server/metrics.rs) has no metric {name}"
            );
        }
    }
}
