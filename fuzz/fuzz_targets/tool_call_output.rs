//! Fuzz target: kiln::fuzzing::tool_call_output (what it feeds and checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(init: kiln::fuzzing::write_seeds("tool_call_output"), |data: &[u8]| {
    kiln::fuzzing::tool_call_output(data);
});
