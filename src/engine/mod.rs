//! The engine: step plans, KV blocks, sampling, sequences and generation.
