//! The CUDA driver as kiln's `Gpu` uses it: memory and copies, pageable and pinned host buffers,
//! graph capture and replay, the calls CUDA refuses, and which driver library runs. Without a GPU
//! these run on kiln's CPU emulator of the driver (cuda/emu/), and that is their main job: they
//! pin down the host-side behaviour a GPU will have. A check that only the emulator can observe
//! (when a pinned copy reads its source) runs on the emulator alone and says so.
#![cfg(feature = "cuda")]

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUresult, CUstreamCaptureMode};
use cudarc::driver::{CudaContext, DriverError};
use cudarc::nvrtc::Ptx;
use kiln::backend::cuda::device::{Dtype, Gpu, Launch};
use kiln::backend::cuda::driver::{self, Driver, Schedule};
use kiln::backend::cuda::params::FillRandomParams;
use kiln::backend::cuda::testing::gpu_for_test;
use kiln::backend::cuda::{kernels, random, CudaError};
use kiln::testing::{seeded_values, test_seed};

/// The driver's error code inside a kiln error.
fn code(error: &CudaError) -> Option<CUresult> {
    match error {
        CudaError::Driver(DriverError(code)) | CudaError::Launch { source: DriverError(code), .. } => Some(*code),
        _ => None,
    }
}

/// A launch of `fill_random_f32` (out[i] = seeded_values(seed)[i], bit for bit) with any geometry.
fn fill_launch(gpu: &Gpu, out: &kiln::backend::cuda::DeviceBuffer, seed: u64, block: u32, shared_bytes: u32) -> Launch {
    let array = out.array();
    let params = FillRandomParams { out: array.ptr, n: array.len as u64, seed, scale: 1.0, offset: 0.0 };
    let kernel = gpu.kernel("fill_random_f32").expect("random.cu defines fill_random_f32");
    Launch::new(&kernel, (array.len.div_ceil(block as usize) as u32, 1, 1), (block, 1, 1), shared_bytes, &params)
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn the_device_says_which_driver_runs_it() {
    let gpu = gpu_for_test("the_device_says_which_driver_runs_it");
    let chosen = driver::loaded().expect("gpu_for_test chose a driver");
    assert_eq!(driver::for_tests().expect("the same choice again"), chosen);
    assert_eq!(driver::is_emulator(), matches!(chosen, Driver::Emulator { .. }));
    match chosen {
        Driver::Emulator { path } => {
            assert!(std::env::var_os("KILN_REQUIRE_GPU").is_none(), "KILN_REQUIRE_GPU is set, yet the emulator runs");
            assert!(path.is_file());
            assert_eq!(gpu.info.name, "kiln CUDA emulator (CPU)");
            assert_eq!(gpu.info.multiprocessors, 8);
            assert_eq!(gpu.info.total_bytes, 16 << 30);
            // A race-free kernel gives the same bits under every thread order.
            let out = gpu.alloc(Dtype::F32, 3000).unwrap();
            let mut results = Vec::new();
            for schedule in [Schedule::Reverse, Schedule::Random { seed: 7 }, Schedule::Forward] {
                driver::set_schedule(schedule).unwrap();
                gpu.poison(out.array()).unwrap();
                gpu.launch(&fill_launch(&gpu, &out, 11, 256, 0)).unwrap();
                results.push(bits(&gpu.download_f32(out.array()).unwrap()));
            }
            assert!(results.windows(2).all(|pair| pair[0] == pair[1]));
        }
        Driver::System => {
            assert!(!gpu.info.name.contains("emulator"), "{}", gpu.info.name);
            assert!(driver::set_schedule(Schedule::Forward).is_err(), "a GPU has no emulated schedule");
        }
    }
}

#[test]
fn copies_round_trip_through_device_memory() {
    let gpu = gpu_for_test("copies_round_trip_through_device_memory");
    let seed = test_seed();
    let values = bits(&seeded_values(seed, 1000));
    let first = gpu.upload_u32(&values).unwrap();
    let second = gpu.alloc(Dtype::U32, 1000).unwrap();
    gpu.poison(second.array()).unwrap();
    // Elements 100..600 of `first` land at 300..800 of `second`; the rest stays poisoned.
    gpu.copy_device(second.array().slice(300, 500), first.array().slice(100, 500), 500 * 4).unwrap();
    let copied = gpu.download_u32(second.array()).unwrap();
    assert!(copied[..300].iter().chain(&copied[800..]).all(|&v| v == u32::MAX), "seed {seed}: outside the copy");
    assert_eq!(copied[300..800], values[100..600], "seed {seed}");
    // A partial read of a slice.
    let mut head = vec![0u8; 40];
    gpu.copy_to_host(&mut head, first.array().slice(990, 10)).unwrap();
    gpu.synchronize().unwrap();
    assert_eq!(bytemuck::cast_slice::<u8, u32>(&head), &values[990..], "seed {seed}");
}

#[test]
fn memset_and_poison_write_every_byte_of_their_range() {
    let gpu = gpu_for_test("memset_and_poison_write_every_byte_of_their_range");
    let buffer = gpu.alloc(Dtype::F32, 1001).unwrap();
    gpu.poison(buffer.array()).unwrap();
    assert!(gpu.download_f32(buffer.array()).unwrap().iter().all(|v| v.to_bits() == u32::MAX));
    gpu.memset(buffer.array().slice(1, 999), 0).unwrap();
    let values = gpu.download_f32(buffer.array()).unwrap();
    assert!(values[0].is_nan() && values[1000].is_nan(), "memset wrote outside its slice");
    assert!(values[1..1000].iter().all(|&v| v == 0.0));
}

#[test]
fn pageable_sources_are_staged_and_pinned_buffers_move_when_the_stream_runs() {
    let gpu = gpu_for_test("pageable_sources_are_staged_and_pinned_buffers_move_when_the_stream_runs");
    let device = gpu.alloc(Dtype::U8, 4096).unwrap();
    // Pageable: CUDA copies the source before the call returns, so reusing it at once is safe.
    let mut pageable = vec![1u8; 4096];
    gpu.copy_to_device(device.array(), &pageable).unwrap();
    pageable.fill(2);
    gpu.synchronize().unwrap();
    assert!(gpu.download_u32(device.array().reinterpret(Dtype::U32)).unwrap().iter().all(|&v| v == 0x0101_0101));

    // Pinned: the copy reads and writes the buffer when the stream reaches it. On a GPU that
    // point is unknown to the host (a race); the emulator makes it the next synchronisation.
    let mut pinned = gpu.alloc_pinned(4096).unwrap();
    pinned.as_mut_bytes().fill(3);
    gpu.copy_to_device(device.array(), pinned.as_bytes()).unwrap();
    pinned.as_mut_bytes().fill(4);
    gpu.synchronize().unwrap();
    let landed = gpu.download_u32(device.array().reinterpret(Dtype::U32)).unwrap();
    if driver::is_emulator() {
        assert!(landed.iter().all(|&v| v == 0x0404_0404), "the emulator reads pinned sources when the copy runs");
    }
    gpu.memset(device.array(), 5).unwrap();
    gpu.copy_to_host(pinned.as_mut_bytes(), device.array()).unwrap();
    if driver::is_emulator() {
        assert!(pinned.as_bytes().iter().all(|&b| b == 4), "nothing lands in pinned memory before a synchronisation");
    }
    gpu.synchronize().unwrap();
    assert!(pinned.as_bytes().iter().all(|&b| b == 5));
}

#[test]
fn a_captured_graph_replays_the_params_it_captured() {
    let gpu = gpu_for_test("a_captured_graph_replays_the_params_it_captured");
    let (seed_a, seed_b) = (test_seed(), test_seed() ^ 0x5555);
    let n = 5000;
    let out = gpu.alloc(Dtype::F32, n).unwrap();
    gpu.poison(out.array()).unwrap();
    let graph = gpu.capture(&[random::fill_random(&gpu, out.array(), seed_a, 1.0, 0.0).unwrap()]).unwrap();
    assert!(gpu.download_f32(out.array()).unwrap().iter().all(|v| v.is_nan()), "capturing ran the launch");
    let expected_a = bits(&seeded_values(seed_a, n));
    let expected_b = bits(&seeded_values(seed_b, n));
    graph.launch().unwrap();
    assert_eq!(bits(&gpu.download_f32(out.array()).unwrap()), expected_a, "seed {seed_a}: first replay");
    gpu.launch(&random::fill_random(&gpu, out.array(), seed_b, 1.0, 0.0).unwrap()).unwrap();
    assert_eq!(bits(&gpu.download_f32(out.array()).unwrap()), expected_b, "seed {seed_b}: a plain launch");
    graph.launch().unwrap();
    assert_eq!(bits(&gpu.download_f32(out.array()).unwrap()), expected_a, "seed {seed_a}: replay after it");
}

#[test]
fn synchronising_a_capturing_stream_fails_and_invalidates_the_capture() {
    let gpu = gpu_for_test("synchronising_a_capturing_stream_fails_and_invalidates_the_capture");
    gpu.stream().begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).unwrap();
    let refused = gpu.synchronize().expect_err("a capturing stream cannot be synchronised");
    assert_eq!(code(&refused), Some(CUresult::CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED), "{refused}");
    let ended = gpu.stream().end_capture(CUgraphInstantiate_flags(0));
    assert!(
        matches!(ended, Err(DriverError(CUresult::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED))),
        "end of an invalidated capture: {:?}",
        ended.map(|graph| graph.is_some())
    );
    // Not a sticky error: the device goes on working.
    let buffer = gpu.upload_u32(&[1, 2, 3]).unwrap();
    assert_eq!(gpu.download_u32(buffer.array()).unwrap(), [1, 2, 3]);
}

#[test]
fn launches_beyond_the_limits_are_refused_and_the_device_goes_on() {
    let gpu = gpu_for_test("launches_beyond_the_limits_are_refused_and_the_device_goes_on");
    let out = gpu.alloc(Dtype::F32, 4096).unwrap();
    let refused = |launch: &Launch| gpu.launch(launch).expect_err("an impossible launch is refused");
    // More than the 1024 threads a block may have in x.
    let too_wide = refused(&fill_launch(&gpu, &out, 1, 1025, 0));
    assert_eq!(code(&too_wide), Some(CUresult::CUDA_ERROR_INVALID_VALUE), "{too_wide}");
    // More than fill_random_f32's __launch_bounds__(256): the real driver says INVALID_VALUE too.
    let over_bounds = refused(&fill_launch(&gpu, &out, 1, 512, 0));
    assert_eq!(code(&over_bounds), Some(CUresult::CUDA_ERROR_INVALID_VALUE), "{over_bounds}");
    // Over 48 KiB of dynamic shared memory without raising the kernel's limit.
    let too_much_shared = refused(&fill_launch(&gpu, &out, 1, 256, 48 * 1024 + 1));
    assert_eq!(code(&too_much_shared), Some(CUresult::CUDA_ERROR_INVALID_VALUE), "{too_much_shared}");
    gpu.synchronize().expect("a refused launch is not a sticky error");
    gpu.launch(&fill_launch(&gpu, &out, 3, 256, 0)).unwrap();
    assert_eq!(bits(&gpu.download_f32(out.array()).unwrap()), bits(&seeded_values(3, 4096)));
}

#[test]
fn a_module_yields_its_own_kernels_and_no_other_names() {
    let gpu = gpu_for_test("a_module_yields_its_own_kernels_and_no_other_names");
    let unknown = gpu.kernel("no_such_kernel").err().expect("kiln knows no such kernel");
    assert!(matches!(unknown, CudaError::Module(_)), "{unknown}");
    // At the driver: random.cu's image defines fill_random_*, and not rmsnorm.cu's kernels.
    let (_, random_image) = kernels::ALL.iter().find(|(file, _)| *file == "random").expect("random.cu is built");
    let ctx = CudaContext::new(0).unwrap();
    let module = ctx.load_module(Ptx::from_binary(random_image.to_vec())).unwrap();
    module.load_function("fill_random_f32").unwrap();
    for name in ["rmsnorm_residual_f16", "no_such_kernel"] {
        let missing = module.load_function(name).expect_err("not in random.cu");
        assert_eq!(missing, DriverError(CUresult::CUDA_ERROR_NOT_FOUND), "{name}");
    }
}

#[test]
fn events_time_the_work_between_them() {
    let gpu = gpu_for_test("events_time_the_work_between_them");
    let out = gpu.alloc(Dtype::F32, 1 << 16).unwrap();
    let ms = gpu.time_ms(|| gpu.launch(&fill_launch(&gpu, &out, 5, 256, 0))).unwrap();
    assert!(ms.is_finite() && ms >= 0.0, "{ms} ms");
    assert_eq!(bits(&gpu.download_f32(out.array()).unwrap()), bits(&seeded_values(5, 1 << 16)));
}
