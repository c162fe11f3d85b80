//! Fuzz target: kiln::fuzzing::webhook_url (what it feeds and checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(init: kiln::fuzzing::write_seeds("webhook_url"), |data: &[u8]| {
    kiln::fuzzing::webhook_url(data);
});
