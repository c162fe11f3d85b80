//! Fuzz target: kiln::fuzzing::native_body (what it feeds and checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(init: kiln::fuzzing::write_seeds("native_body"), |data: &[u8]| {
    kiln::fuzzing::native_body(data);
});
