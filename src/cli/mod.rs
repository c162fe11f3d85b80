//! The `kiln` subcommands, as library functions the binary calls after parsing arguments.

pub mod bench;
pub mod bench_concurrency;
pub mod generate;
pub mod load;
pub mod serve;

/// Sends logs to stderr (stdout carries only generated text), filtered by `KILN_LOG` or `RUST_LOG`.
/// The coroutine runtime's own info lines (one per connection, "add fd to epoll select") are off
/// unless the filter names `may`: they would drown the access log.
pub fn init_logging() {
    let mut filter =
        std::env::var("KILN_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "info".to_string());
    if !filter.contains("may") {
        filter.push_str(",may=warn");
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Sizes the thread pool every CPU kernel runs on; `None` uses every core.
pub fn init_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(threads) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build_global()
            .map_err(|e| anyhow::anyhow!("setting up {threads} threads: {e}"))?;
    }
    Ok(())
}
