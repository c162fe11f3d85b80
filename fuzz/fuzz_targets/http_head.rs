//! Fuzz target: kiln::fuzzing::http_head (what it feeds and checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(init: kiln::fuzzing::write_seeds("http_head"), |data: &[u8]| {
    kiln::fuzzing::http_head(data);
});
