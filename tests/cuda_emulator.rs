//! The CUDA emulator catches what docs/emulator.md says it catches: each scenario runs a kernel
//! with the bug and without it (cuda/emu/selftest.cpp) and passes when the correct kernel runs
//! and the buggy one is caught. These test the emulator itself, so they load its library
//! directly and run on every machine that built it, GPU or not.
#![cfg(feature = "cuda")]

use std::ffi::{c_char, c_int, CString};

fn scenario(name: &str) {
    let path = env!("KILN_CUDA_EMULATOR_BUILT_LIB");
    // SAFETY: the emulator library has no load-time side effects beyond registering its kernels,
    // and kiln_emu_selftest has this C signature (cuda/emu/selftest.cpp).
    let outcome = unsafe {
        let library = libloading::Library::new(path).unwrap_or_else(|e| panic!("cannot load {path}: {e}"));
        let selftest = library
            .get::<unsafe extern "C" fn(*const c_char, *mut c_char, usize) -> c_int>(b"kiln_emu_selftest\0")
            .expect("the emulator exports kiln_emu_selftest");
        let scenario = CString::new(name).unwrap();
        let mut message = vec![0u8; 512];
        let caught = selftest(scenario.as_ptr(), message.as_mut_ptr() as *mut c_char, message.len());
        let end = message.iter().position(|&b| b == 0).unwrap_or(message.len());
        (caught, String::from_utf8_lossy(&message[..end]).into_owned())
    };
    assert_eq!(outcome.0, 1, "{name}: {}", outcome.1);
}

#[test]
fn a_missing_barrier_shows_as_poisoned_shared_memory() {
    scenario("missing_barrier");
}

#[test]
fn a_barrier_reached_by_part_of_the_block_is_an_error() {
    scenario("divergent_barrier");
}

#[test]
fn lanes_at_different_warp_instructions_are_an_error() {
    scenario("divergent_warp");
}

#[test]
fn a_full_mask_shuffle_after_lanes_exited_is_an_error() {
    scenario("shuffle_after_exit");
}

#[test]
fn cp_async_data_lands_only_at_its_wait() {
    scenario("cp_async_wait");
}

#[test]
fn shared_memory_accesses_out_of_bounds_are_an_error() {
    scenario("shared_bounds");
}
