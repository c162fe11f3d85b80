//! (owned by the core work)
