// Kernels with the bugs the emulator exists to catch, run by tests/cuda_emulator.rs through
// `kiln_emu_selftest`: each scenario says whether the emulator showed the bug (poisoned output,
// an error naming the problem) and that the corrected kernel passes. They are compiled into the
// emulator library only; no fatbin names them, so the driver never hands them out.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

#include "../common.cuh"
#include "../ptx.cuh"
#include "registry.h"

struct SelftestParams {
    float* out;
    const float* in;
    uint32_t variant;  // 0: the correct kernel, 1: the buggy one
    uint32_t n;
    uint64_t unused;
};

namespace selftest_kernels {

// Thread 0 writes a shared value everybody reads: without the barrier, threads that run first
// read poison.
extern "C" void emu_selftest_barrier(const SelftestParams p) {
    KILN_SHARED(float, value, [1]);
    if (threadIdx.x == 0) value[0] = 42.0f;
    if (p.variant == 0) __syncthreads();
    p.out[threadIdx.x] = value[0];
}
KILN_EMU_REGISTER(emu_selftest_barrier, 128)

// A barrier inside a branch only half the block takes.
extern "C" void emu_selftest_divergent_barrier(const SelftestParams p) {
    if (p.variant == 0 || threadIdx.x < blockDim.x / 2) __syncthreads();
    p.out[threadIdx.x] = 1.0f;
}
KILN_EMU_REGISTER(emu_selftest_divergent_barrier, 128)

// Lanes of one warp reaching different warp-level instructions.
extern "C" void emu_selftest_divergent_warp(const SelftestParams p) {
    float v = (float)threadIdx.x;
    if (p.variant == 0 || threadIdx.x % 2 == 0) {
        v = __shfl_xor_sync(0xFFFFFFFFu, v, 1);
    } else {
        __syncwarp();
    }
    p.out[threadIdx.x] = v;
}
KILN_EMU_REGISTER(emu_selftest_divergent_warp, 128)

// A full-mask shuffle after some lanes of the warp returned.
extern "C" void emu_selftest_shuffle_after_exit(const SelftestParams p) {
    if (p.variant == 1 && threadIdx.x % 32 >= 16) return;
    p.out[threadIdx.x] = warp_sum(1.0f);
}
KILN_EMU_REGISTER(emu_selftest_shuffle_after_exit, 128)

// cp.async data read before cp.async.wait_group retired it.
extern "C" void emu_selftest_cp_async_wait(const SelftestParams p) {
    KILN_DYNAMIC_SHARED(smem);
    float* staged = reinterpret_cast<float*>(smem);
    const unsigned t = threadIdx.x;
    if (t < p.n / 4) ptx::cp_async16(ptx::shared_address(staged + 4 * t), p.in + 4 * t, 16);
    ptx::cp_async_commit();
    if (p.variant == 0) ptx::cp_async_wait<0>();
    __syncthreads();
    if (t < p.n) p.out[t] = staged[t];
    if (p.variant == 1) ptx::cp_async_wait<0>();
}
KILN_EMU_REGISTER(emu_selftest_cp_async_wait, 128)

// A cp.async past the end of dynamic shared memory.
extern "C" void emu_selftest_shared_bounds(const SelftestParams p) {
    KILN_DYNAMIC_SHARED(smem);
    const unsigned past = p.variant == 1 ? 16 : 0;
    if (threadIdx.x == 0) ptx::cp_async16(ptx::shared_address(smem + 4 * p.n - 16 + past), p.in, 16);
    ptx::cp_async_commit();
    ptx::cp_async_wait<0>();
    p.out[threadIdx.x] = 0.0f;
}
KILN_EMU_REGISTER(emu_selftest_shared_bounds, 128)

// The sanitizer canaries (tools/emu-sanitizers): bugs only a sanitizer build reports. Thread 0
// writes one element past the output; every thread adds to one shared word with no barrier.
extern "C" void emu_canary_global_overflow(const SelftestParams p) {
    if (threadIdx.x == 0) p.out[p.n] = 1.0f;
}
KILN_EMU_REGISTER(emu_canary_global_overflow, 128)

extern "C" void emu_canary_shared_race(const SelftestParams p) {
    KILN_SHARED(float, total, [1]);
    if (threadIdx.x == 0) total[0] = 0.0f;
    __syncthreads();
    total[0] += 1.0f;
    __syncthreads();
    if (threadIdx.x == 0) p.out[0] = total[0];
}
KILN_EMU_REGISTER(emu_canary_shared_race, 128)

}  // namespace selftest_kernels

namespace {

struct Outcome {
    std::string error;
    float out[128];
};

Outcome run(const char* kernel, uint32_t variant, kiln_emu::Schedule schedule, unsigned dynamic_shared = 0) {
    Outcome outcome;
    float in[128];
    for (int i = 0; i < 128; i++) in[i] = (float)i;
    for (float& v : outcome.out) v = -1.0f;
    SelftestParams params{outcome.out, in, variant, 64, 0};
    kiln_emu::set_schedule(schedule, 7);
    outcome.error = kiln_emu::run_grid(*kiln_emu::find_kernel(kernel), {1, 1, 1}, {128, 1, 1}, dynamic_shared, &params);
    return outcome;
}

bool all_equal(const float* out, int n, float value) {
    for (int i = 0; i < n; i++) {
        if (!(out[i] == value)) return false;
    }
    return true;
}

bool any_nan(const float* out, int n) {
    for (int i = 0; i < n; i++) {
        if (std::isnan(out[i])) return true;
    }
    return false;
}

// "" when the scenario behaves (the correct kernel passes, the buggy one is caught), else why not.
std::string check(const std::string& scenario) {
    using kiln_emu::Schedule;
    auto expect_error = [](const Outcome& bad, const char* words) -> std::string {
        if (bad.error.find(words) == std::string::npos) return "the buggy kernel gave '" + bad.error + "', wanted an error about '" + words + "'";
        return "";
    };
    if (scenario == "missing_barrier") {
        const Outcome good = run("emu_selftest_barrier", 0, Schedule::Reverse);
        if (!good.error.empty() || !all_equal(good.out, 128, 42.0f)) return "the correct kernel failed: " + good.error;
        const Outcome bad = run("emu_selftest_barrier", 1, Schedule::Reverse);
        if (!bad.error.empty()) return "unexpected error: " + bad.error;
        if (!any_nan(bad.out, 128)) return "the missing barrier went unnoticed (no thread read poison)";
        return "";
    }
    if (scenario == "divergent_barrier") {
        const Outcome good = run("emu_selftest_divergent_barrier", 0, Schedule::Forward);
        if (!good.error.empty()) return "the correct kernel failed: " + good.error;
        return expect_error(run("emu_selftest_divergent_barrier", 1, Schedule::Forward), "__syncthreads()");
    }
    if (scenario == "divergent_warp") {
        const Outcome good = run("emu_selftest_divergent_warp", 0, Schedule::Random);
        if (!good.error.empty() || good.out[0] != 1.0f || good.out[1] != 0.0f) return "the correct kernel failed: " + good.error;
        return expect_error(run("emu_selftest_divergent_warp", 1, Schedule::Random), "diverged");
    }
    if (scenario == "shuffle_after_exit") {
        const Outcome good = run("emu_selftest_shuffle_after_exit", 0, Schedule::Forward);
        if (!good.error.empty() || !all_equal(good.out, 128, 32.0f)) return "the correct kernel failed: " + good.error;
        return expect_error(run("emu_selftest_shuffle_after_exit", 1, Schedule::Forward), "exited");
    }
    if (scenario == "cp_async_wait") {
        const Outcome good = run("emu_selftest_cp_async_wait", 0, Schedule::Random, 256);
        for (int i = 0; i < 64; i++) {
            if (good.out[i] != (float)i) return "the correct kernel failed: " + good.error;
        }
        const Outcome bad = run("emu_selftest_cp_async_wait", 1, Schedule::Random, 256);
        if (!bad.error.empty()) return "unexpected error: " + bad.error;
        if (!any_nan(bad.out, 64)) return "data read before cp.async.wait_group went unnoticed";
        return "";
    }
    if (scenario == "shared_bounds") {
        const Outcome good = run("emu_selftest_shared_bounds", 0, Schedule::Forward, 256);
        if (!good.error.empty()) return "the correct kernel failed: " + good.error;
        return expect_error(run("emu_selftest_shared_bounds", 1, Schedule::Forward, 256), "outside");
    }
    return "no scenario named " + scenario;
}

}  // namespace

// Runs one scenario; returns 1 when the emulator caught the bug (and passed the correct kernel),
// 0 otherwise with the reason in `message`. Restores the schedule from the environment after.
extern "C" int kiln_emu_selftest(const char* scenario, char* message, size_t message_bytes) {
    // The schedule is process-wide: scenarios run one at a time so each keeps the order it set.
    static std::mutex one_at_a_time;
    std::lock_guard<std::mutex> guard(one_at_a_time);
    const std::string problem = check(scenario);
    kiln_emu::set_schedule(kiln_emu::Schedule::Random, 1);
    snprintf(message, message_bytes, "%s", problem.c_str());
    return problem.empty() ? 1 : 0;
}

// Runs a sanitizer canary ("global_overflow" or "shared_race") on a heap buffer of exactly
// `n` floats, as the driver allocates device memory. Under the matching sanitizer the process
// stops with its report; otherwise the bug goes unnoticed and this returns 1 (0: no such canary).
extern "C" int kiln_emu_sanitizer_canary(const char* which) {
    const std::string name = std::string("emu_canary_") + which;
    const kiln_emu::KernelInfo* kernel = kiln_emu::find_kernel(name.c_str());
    if (!kernel) return 0;
    const uint32_t n = 128;
    float* out = new float[n];
    float in[1] = {0.0f};
    SelftestParams params{out, in, 1, n, 0};
    const std::string error = kiln_emu::run_grid(*kernel, {1, 1, 1}, {128, 1, 1}, 0, &params);
    delete[] out;
    if (!error.empty()) fprintf(stderr, "canary %s: %s\n", which, error.c_str());
    return 1;
}
