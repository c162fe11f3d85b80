//! Fuzz target: kiln::fuzzing::safetensors_reader (what it feeds and checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(init: kiln::fuzzing::write_seeds("safetensors_reader"), |data: &[u8]| {
    kiln::fuzzing::safetensors_reader(data);
});
