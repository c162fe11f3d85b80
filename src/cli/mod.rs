//! The command line's subcommands, as library code so tests and tools can call them.

pub mod bench;
