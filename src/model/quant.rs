//! (owned by the model-import work; see model/mod.rs)
