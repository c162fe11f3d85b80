//! Fuzz target: kiln::fuzzing::json_schema (what it feeds and checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(init: kiln::fuzzing::write_seeds("json_schema"), |data: &[u8]| {
    kiln::fuzzing::json_schema(data);
});
