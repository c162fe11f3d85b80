//! Loading a model for a command: resolve (pull or convert when needed), then tokenizer and
//! backend (CPU, or CUDA when built with it and a GPU is there), with a progress line on a terminal.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::backend::plan::PlanLimits;
use crate::backend::Backend;
use crate::launch::{cpu_backend_tensor_parallel, CpuLimits};
use crate::model::weights::LlamaWeights;
use crate::model::ModelConfig;
use crate::tokenizer::Tokenizer;

/// Which backend runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// CUDA when this build has it and a GPU is present, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// Memory and batch limits, whatever the backend.
#[derive(Debug, Clone, Copy)]
pub struct LoadLimits {
    /// KV cache bytes; None: 1 GiB on the CPU, most of the free memory on a GPU.
    pub kv_memory_bytes: Option<usize>,
    pub max_batch_tokens: usize,
    pub max_seqs: usize,
    /// Tensor-parallel ranks (1: none).
    pub tensor_parallel: usize,
}

pub struct LoadedModel {
    pub dir: PathBuf,
    pub name: String,
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub backend: Box<dyn Backend>,
    pub plan_limits: PlanLimits,
}

/// Loads `model` (a directory, a GGUF file, or the default model when None).
///
/// On the CPU a GGUF file runs from its own weights, quantized ones kept quantized (its converted
/// directory supplies only the tokenizer); `original_weights` does the same for the default model
/// with its original Q4_1 file. Otherwise the Hugging Face directory's weights are used: the exact
/// f16 path.
pub fn load_model(
    model: Option<&Path>,
    limits: LoadLimits,
    choice: BackendChoice,
    original_weights: bool,
) -> anyhow::Result<LoadedModel> {
    let use_cuda = pick_cuda(choice, limits.tensor_parallel)?;
    let gguf = match model {
        Some(path) if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) => {
            Some(path.to_path_buf())
        }
        None if original_weights => {
            Some(crate::model::pull::pull_default_gguf_into(&crate::model::pull::kiln_home()?)?)
        }
        Some(_) if original_weights => {
            anyhow::bail!("--original-weights runs the default model's GGUF; with --model, pass the .gguf file itself")
        }
        _ => None,
    };
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
    let cpu_limits = CpuLimits {
        kv_memory_bytes: limits.kv_memory_bytes.unwrap_or(1 << 30),
        kv_max_tokens: None,
        max_batch_tokens: limits.max_batch_tokens,
        max_seqs: limits.max_seqs,
    };
    let ranks = limits.tensor_parallel;
    let (config, backend, plan_limits) = match &gguf {
        Some(path) if !use_cuda => {
            let (config, weights) = crate::model::gguf_weights::load_gguf_weights(path)?;
            let (backend, plan_limits) = cpu_backend_tensor_parallel(config, weights, cpu_limits, ranks)?;
            tracing::info!("running {} with its stored (quantized) weights", path.display());
            let config = backend.config().clone();
            (config, Box::new(backend) as Box<dyn Backend>, plan_limits)
        }
        _ => {
            let config = ModelConfig::from_dir(&dir)?;
            let weights = LlamaWeights::load(&dir, &config)?;
            progress.inc(1);
            progress.set_message(if use_cuda { "weights onto the GPU" } else { "KV cache" });
            let (backend, plan_limits) = if use_cuda {
                cuda_backend(config.clone(), &weights, limits)?
            } else {
                let (backend, plan_limits) = cpu_backend_tensor_parallel(config.clone(), weights, cpu_limits, ranks)?;
                (Box::new(backend) as Box<dyn Backend>, plan_limits)
            };
            (config, backend, plan_limits)
        }
    };
    progress.inc(1);
    progress.finish_and_clear();
    let name = model_name(&dir);
    tracing::info!(
        "loaded {name} from {} in {:.2}s ({} layers, {:.0}M parameters) on the {} backend",
        dir.display(),
        started.elapsed().as_secs_f64(),
        config.num_layers,
        config.num_parameters() as f64 / 1e6,
        backend.name(),
    );
    Ok(LoadedModel { dir, name, config, tokenizer, backend, plan_limits })
}

/// Decides whether to run on CUDA; `auto` falls back to the CPU with one log line, also when
/// there are fewer GPUs than tensor-parallel ranks (`--backend cuda` then reports that itself).
fn pick_cuda(choice: BackendChoice, ranks: usize) -> anyhow::Result<bool> {
    match choice {
        BackendChoice::Cpu => Ok(false),
        BackendChoice::Cuda => match gpu_status(1) {
            Ok(()) => Ok(true),
            Err(why) => anyhow::bail!("--backend cuda: {why}"),
        },
        BackendChoice::Auto => match gpu_status(ranks) {
            Ok(()) => Ok(true),
            Err(why) => {
                tracing::info!("using the CPU backend: {why}");
                Ok(false)
            }
        },
    }
}

/// Whether `ranks` tensor-parallel ranks can run on GPUs here (one GPU each).
#[cfg(feature = "cuda")]
fn gpu_status(ranks: usize) -> Result<(), String> {
    use crate::backend::cuda::{device::gpu_count, tensor_parallel::check_gpu_count, Transport};
    crate::backend::cuda::cuda_available()?;
    if ranks > 1 {
        let gpus = gpu_count().map_err(|e| e.to_string())?;
        check_gpu_count(Transport::Nccl, ranks, gpus).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn gpu_status(_ranks: usize) -> Result<(), String> {
    Err("this kiln was built without CUDA (rebuild with `--features cuda`)".into())
}

#[cfg(feature = "cuda")]
fn cuda_backend(
    config: ModelConfig,
    weights: &LlamaWeights,
    limits: LoadLimits,
) -> anyhow::Result<(Box<dyn Backend>, PlanLimits)> {
    use crate::backend::cuda::{cuda_backend_tensor_parallel, CudaLimits, CudaOptions, Transport, WeightSource};
    // Quantized weights are widened on the host as they are uploaded (f16 on the GPU).
    let options = CudaOptions::for_weights(
        weights.embed_tokens.format.float_dtype().unwrap_or(crate::model::safetensors_dir::WeightDtype::F16),
    );
    // The byte budget is the total over the ranks, as on the CPU: every rank holds every token,
    // each its own KV heads of it.
    let kv_token_bytes = 2 * config.num_layers * config.kv_dim() * options.dtype.size_bytes();
    let cuda_limits = CudaLimits {
        kv_tokens: limits.kv_memory_bytes.map(|bytes| bytes / kv_token_bytes),
        max_batch_tokens: limits.max_batch_tokens,
        max_seqs: limits.max_seqs,
    };
    let ranks = limits.tensor_parallel;
    let (backend, plan_limits) = cuda_backend_tensor_parallel(
        config,
        WeightSource::Host(weights),
        cuda_limits,
        options,
        ranks,
        Transport::Nccl,
    )?;
    Ok((Box::new(backend), plan_limits))
}

#[cfg(not(feature = "cuda"))]
fn cuda_backend(_: ModelConfig, _: &LlamaWeights, _: LoadLimits) -> anyhow::Result<(Box<dyn Backend>, PlanLimits)> {
    unreachable!("pick_cuda never chooses CUDA in a build without it")
}

/// A model's name: its directory's name (what `/v1/models` lists by default).
pub fn model_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".to_string())
}
