//! Loading a model for a command: resolve (pull or convert when needed), then tokenizer and CPU
//! backend, with a progress line on a terminal.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::cpu::CpuBackend;
use crate::engine::plan::PlanLimits;
use crate::launch::{load_cpu_backend, CpuLimits};
use crate::tokenizer::Tokenizer;

pub struct LoadedModel {
    pub dir: PathBuf,
    pub name: String,
    pub tokenizer: Tokenizer,
    pub backend: CpuBackend,
    pub plan_limits: PlanLimits,
}

pub fn load_model(model: Option<&Path>, limits: CpuLimits) -> anyhow::Result<LoadedModel> {
    let dir = crate::model::pull::resolve_model(model)?;
    let started = Instant::now();
    // Hidden automatically when stderr is not a terminal.
    let progress = ProgressBar::new(3).with_style(
        ProgressStyle::with_template("{spinner} loading {msg} [{bar:20}] {pos}/{len}").expect("the template is valid"),
    );
    progress.set_message("tokenizer");
    let tokenizer = Tokenizer::from_dir(&dir).with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
    progress.inc(1);
    progress.set_message("weights");
    let (backend, plan_limits) = load_cpu_backend(&dir, limits)?;
    progress.inc(2);
    progress.finish_and_clear();
    let name = model_name(&dir);
    tracing::info!(
        "loaded {name} from {} in {:.2}s ({} layers, {:.0}M parameters) on the cpu backend with {} threads",
        dir.display(),
        started.elapsed().as_secs_f64(),
        crate::backend::Backend::config(&backend).num_layers,
        crate::backend::Backend::config(&backend).num_parameters() as f64 / 1e6,
        rayon::current_num_threads()
    );
    Ok(LoadedModel { dir, name, tokenizer, backend, plan_limits })
}

/// A model's name: its directory's name (what `/v1/models` lists by default).
pub fn model_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".to_string())
}
