//! Fuzz target: kiln::fuzzing::tokenizer_decode (what it feeds and checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(init: kiln::fuzzing::write_seeds("tokenizer_decode"), |data: &[u8]| {
    kiln::fuzzing::tokenizer_decode(data);
});
