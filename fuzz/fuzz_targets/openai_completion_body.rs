//! Fuzz target: kiln::fuzzing::openai_completion_body (what it feeds and checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(init: kiln::fuzzing::write_seeds("openai_completion_body"), |data: &[u8]| {
    kiln::fuzzing::openai_completion_body(data);
});
