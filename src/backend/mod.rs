//! Backends run the forward pass over a step plan; `cpu` is the reference and the default.
