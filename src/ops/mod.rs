//! The CPU reference: one plain function per operation of the forward pass, each with unit tests.
