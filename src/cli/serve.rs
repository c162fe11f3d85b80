//! `kiln serve`: the HTTP server in front of the engine. It listens at once (answering 503 while
//! the model loads), then serves until SIGTERM or SIGINT, letting running requests finish.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;

use super::generate::stop_ids;
use super::load::{load_model, BackendChoice, LoadLimits};
use crate::engine::core::EngineConfig;
use crate::engine::json_schema::SchemaCache;
use crate::engine::serving::start_engine;
use crate::server::api::pricing::{Prices, DEFAULT_PRICES};
use crate::server::app::{unix_now, App};
use crate::server::http::{shutdown_on_signals, HttpConfig, Server, ShutdownHandle};
use crate::server::keys::ApiKeys;
use crate::server::metrics::ServerMetrics;
use crate::server::rate_limit::KeyLimits;
use crate::server::routes::Routes;
use crate::server::webhook::WebhookPolicy;
use crate::server::webhook_destination::Allowed;
use crate::tokenizer::tool_calls::ToolCallFormat;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct ServeArgs {
    pub model: Option<PathBuf>,
    pub host: String,
    pub port: u16,
    pub api_keys: Vec<String>,
    pub api_keys_file: Option<PathBuf>,
    pub served_model_name: Option<String>,
    pub webhook_allow: Vec<String>,
    /// None: 1 GiB on the CPU, most of the free memory on a GPU.
    pub kv_memory_bytes: Option<usize>,
    pub backend: BackendChoice,
    /// Run the default model from its original quantized GGUF instead of the f16 directory.
    pub original_weights: bool,
    /// Tensor-parallel ranks (1: none).
    pub tensor_parallel: usize,
    pub max_batch_tokens: usize,
    pub max_seqs: usize,
    pub max_prefill_chunk: usize,
    pub max_waiting: usize,
    pub prefix_caching: bool,
    /// Sample on the host even where the backend samples on its device (`EngineConfig`).
    pub host_sampling: bool,
    pub max_connections: usize,
    pub prices: Prices,
    /// Limits of keys that the keys file does not give their own.
    pub key_limits: KeyLimits,
    /// After SIGTERM, how long running requests may take before they are cut with an error.
    pub shutdown_timeout: Duration,
    /// How long a response write may stall (a client that does not read) before the request is
    /// cut and its sequence freed.
    pub write_timeout: Duration,
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Longest the engine may stay inside one step before `/health/live` answers 503.
    pub liveness_timeout: Duration,
    /// `--tool-call-parser`: a `ToolCallFormat` name; None reads the format from the template.
    pub tool_call_parser: Option<String>,
}

impl Default for ServeArgs {
    fn default() -> Self {
        ServeArgs {
            model: None,
            host: "127.0.0.1".into(),
            port: 8000,
            api_keys: Vec::new(),
            api_keys_file: None,
            served_model_name: None,
            webhook_allow: Vec::new(),
            kv_memory_bytes: None,
            backend: BackendChoice::Auto,
            original_weights: false,
            tensor_parallel: 1,
            max_batch_tokens: 512,
            max_seqs: 16,
            max_prefill_chunk: 256,
            max_waiting: 256,
            prefix_caching: true,
            host_sampling: false,
            max_connections: 1000,
            prices: DEFAULT_PRICES,
            key_limits: KeyLimits::default(),
            shutdown_timeout: HttpConfig::default().drain_timeout,
            write_timeout: HttpConfig::default().write_timeout,
            max_body_bytes: HttpConfig::default().max_body_bytes,
            liveness_timeout: DEFAULT_LIVENESS_TIMEOUT,
            tool_call_parser: None,
        }
    }
}

/// Serves until SIGTERM/SIGINT, or until the engine fails: then the server drains (every request
/// has had its error) and this returns the failure, so that kiln exits non-zero and its
/// supervisor (systemd, Kubernetes) restarts it with a fresh engine and device.
impl ServeArgs {
    /// The engine these arguments ask for (`kiln generate` takes it too, with one sequence).
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            max_batch_tokens: self.max_batch_tokens,
            max_seqs: self.max_seqs,
            max_prefill_chunk: self.max_prefill_chunk,
            max_waiting: self.max_waiting,
            prefix_caching: self.prefix_caching,
            host_sampling: self.host_sampling,
        }
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (server, engine_failure) = start_watched(args, true)?;
    let report = server.wait();
    tracing::info!("stopped ({} connections were still open at the deadline)", report.unfinished_connections);
    match engine_failure.get() {
        Some(cause) => anyhow::bail!("the engine failed: {cause}"),
        None => Ok(()),
    }
}

/// Binds, loads the model and starts the engine; returns the running server. `signals`: stop
/// gracefully on SIGTERM/SIGINT (the CLI); tests leave it off and stop through the handle.
pub fn start(args: ServeArgs, signals: bool) -> anyhow::Result<Server> {
    start_watched(args, signals).map(|(server, _)| server)
}

/// `start`, plus the cell that holds the engine's failure once it has failed (the server is
/// then shutting down).
pub fn start_watched(args: ServeArgs, signals: bool) -> anyhow::Result<(Server, Arc<OnceLock<String>>)> {
    let address: SocketAddr = (args.host.as_str(), args.port)
        .to_socket_addrs()
        .with_context(|| format!("resolving --host {}", args.host))?
        .next()
        .with_context(|| format!("--host {} has no address", args.host))?;
    let api_keys = ApiKeys::load(&args.api_keys, args.api_keys_file.as_deref(), args.key_limits)?;
    let webhook_allowed = Allowed::parse(&args.webhook_allow).map_err(|e| anyhow::anyhow!("--webhook-allow {e}"))?;
    let slot: Arc<OnceLock<Arc<App>>> = Arc::new(OnceLock::new());
    let http = HttpConfig {
        max_connections: args.max_connections,
        drain_timeout: args.shutdown_timeout,
        write_timeout: args.write_timeout,
        max_body_bytes: args.max_body_bytes,
        ..HttpConfig::default()
    };
    let server =
        Server::bind(address, http, Routes(slot.clone())).with_context(|| format!("listening on {address}"))?;
    if signals {
        shutdown_on_signals(server.shutdown_handle())?;
    }
    tracing::info!("listening on http://{} (503 until the model is ready)", server.local_addr());

    let limits = LoadLimits {
        kv_memory_bytes: args.kv_memory_bytes,
        max_batch_tokens: args.max_batch_tokens,
        max_seqs: args.max_seqs,
        tensor_parallel: args.tensor_parallel,
    };
    let loaded = load_model(args.model.as_deref(), limits, args.backend, args.original_weights)?;
    let config = loaded.config.clone();
    let tokenizer = Arc::new(loaded.tokenizer);
    let engine_config = args.engine_config();
    let (engine, engine_thread) = start_engine(loaded.backend, tokenizer.clone(), engine_config);
    let engine_failure = engine.failure_cell();
    watch_engine(engine_thread, engine_failure.clone(), server.shutdown_handle());
    let model_name = args.served_model_name.clone().unwrap_or(loaded.name);
    let schemas = SchemaCache::for_tokenizer(&tokenizer);
    let tool_call_format = tool_call_format(args.tool_call_parser.as_deref(), &tokenizer)?;
    let app = App {
        engine,
        stop_token_ids: stop_ids(&config.eos_token_ids, tokenizer.eos_token_id()),
        tokenizer,
        model_name: model_name.clone(),
        api_keys,
        prices: args.prices,
        webhooks: WebhookPolicy {
            allowed: webhook_allowed,
            timeout: Duration::from_secs(10),
            attempts: 3,
            retry_backoff: Duration::from_secs(1),
        },
        schemas,
        tool_call_format,
        ready: AtomicBool::new(true),
        metrics: ServerMetrics::default(),
        started_unix: unix_now(),
        liveness_timeout: args.liveness_timeout,
    };
    let _ = slot.set(Arc::new(app));
    tracing::info!(
        "serving {model_name} at http://{}/v1 (OpenAI API) and /v1/inference/{model_name}",
        server.local_addr()
    );
    Ok((server, engine_failure))
}

/// A step of the default model takes milliseconds, and of a 70B model on a GPU under a second; two
/// minutes is a hung device or a deadlock, not a slow step.
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a server whose engine failed keeps answering 503 before it drains and exits.
const ENGINE_FAILURE_GRACE: Duration = Duration::from_secs(2);

/// When the engine thread ends with a failure, starts the server's shutdown: readiness is 503
/// already (routes check the failure), the requests it held have their errors, and the drain lets
/// those answers reach their clients before the process exits.
fn watch_engine(engine_thread: std::thread::JoinHandle<()>, failure: Arc<OnceLock<String>>, shutdown: ShutdownHandle) {
    let watcher = std::thread::Builder::new().name("kiln-engine-watch".into()).spawn(move || {
        let _ = engine_thread.join();
        if let Some(cause) = failure.get() {
            tracing::error!("the engine failed ({cause}): shutting down so that a supervisor restarts kiln");
            // A moment in which new connections still get a 503 naming the failure (a probe or a
            // retrying client learns why) rather than a refused connection.
            std::thread::sleep(ENGINE_FAILURE_GRACE);
            shutdown.trigger();
        }
    });
    if let Err(error) = watcher {
        tracing::warn!("could not start the engine watcher ({error}); an engine failure will not stop the server");
    }
}

/// The flag's format, else the one the chat template writes, else Hermes: kiln describes tools to a
/// template that does not know them in the Hermes format (`tokenizer::tool_prompt`).
fn tool_call_format(flag: Option<&str>, tokenizer: &Tokenizer) -> anyhow::Result<ToolCallFormat> {
    if let Some(name) = flag {
        return Ok(ToolCallFormat::from_name(name)?);
    }
    let template = tokenizer.chat_template();
    let detected = template.and_then(|t| ToolCallFormat::detect(t.source()));
    if detected.is_none() && template.is_some_and(|t| t.supports_tools()) {
        tracing::warn!("the chat template renders tools in a format kiln does not recognise; reading tool calls as hermes (set --tool-call-parser)");
    }
    Ok(detected.unwrap_or(ToolCallFormat::Hermes))
}
