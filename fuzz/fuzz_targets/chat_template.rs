//! Fuzz target: kiln::fuzzing::chat_template (what it feeds and checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(init: kiln::fuzzing::write_seeds("chat_template"), |data: &[u8]| {
    kiln::fuzzing::chat_template(data);
});
