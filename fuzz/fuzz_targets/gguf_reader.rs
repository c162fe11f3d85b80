//! Fuzz target: kiln::fuzzing::gguf_reader (what it feeds and checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(init: kiln::fuzzing::write_seeds("gguf_reader"), |data: &[u8]| {
    kiln::fuzzing::gguf_reader(data);
});
