//! Backends run the forward pass over a step plan. They know nothing about requests: only plans,
//! weights and buffers. `cpu` is the reference and the default.

pub mod collective;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod plan;
pub mod sampling;
pub mod sharding;

use crate::backend::plan::StepPlan;
use crate::model::ModelConfig;
use sampling::{HistoryEntry, RowSampling, SampledRows};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("step plan does not fit this backend: {0}")]
    PlanMismatch(String),
    #[error("logits buffer holds {got} values, the step needs {needed}")]
    LogitsBuffer { got: usize, needed: usize },
    /// The device itself failed (a kernel launch, a driver call, a fault reported at the next
    /// synchronisation): the step's results are lost and the device may be unusable.
    #[error("the {backend} device failed: {message}")]
    Device { backend: &'static str, message: String },
    #[error("the {backend} backend does not sample on its device")]
    NoDeviceSampling { backend: &'static str },
}

impl BackendError {
    /// The backend cannot be trusted with another step (its device failed): the engine stops
    /// rather than serve from a broken device. Other errors fail only the step's requests.
    pub fn is_fatal(&self) -> bool {
        matches!(self, BackendError::Device { .. })
    }
}

/// Tokens per KV block: small enough that little is wasted at the end of a sequence, large
/// enough that block tables stay short.
pub const KV_BLOCK_SIZE: usize = 16;

/// How the backend's KV memory is divided; fixed at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub block_size: usize,
    pub num_blocks: usize,
}

impl KvLayout {
    pub fn capacity_tokens(&self) -> usize {
        self.block_size * self.num_blocks
    }
}

pub trait Backend: Send {
    fn name(&self) -> &'static str;
    fn config(&self) -> &ModelConfig;
    fn kv_layout(&self) -> KvLayout;
    /// Runs one forward step: writes K/V of every planned token into its KV slot and the logits of
    /// the plan's `logit_tokens` into `logits` (`[plan.num_logits(), vocab]`).
    fn execute(&mut self, plan: &StepPlan, logits: &mut [f32]) -> Result<(), BackendError>;

    /// Whether `execute_and_sample` works: the backend then chooses the tokens where the logits
    /// are, and only ids (and asked-for log-probabilities) come back.
    fn samples_on_device(&self) -> bool {
        false
    }

    /// Runs one forward step like `execute`, then samples each of the plan's logits rows with
    /// `rows[r]` (one per row, in plan order). `history` holds the rows' logit-bias and penalty
    /// entries (each row's `history()` range), `masks` their allowed-token mask rows (`[mask rows,
    /// mask_words(vocab)]`). `out` is cleared and gets one result per row. Only where
    /// `samples_on_device` says so.
    fn execute_and_sample(
        &mut self,
        plan: &StepPlan,
        rows: &[RowSampling],
        history: &[HistoryEntry],
        masks: &[u32],
        out: &mut SampledRows,
    ) -> Result<(), BackendError> {
        let _ = (plan, rows, history, masks, out);
        Err(BackendError::NoDeviceSampling { backend: self.name() })
    }
}
