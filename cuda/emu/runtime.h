// The emulator's runtime as the driver stand-in (driver.cpp) sees it: the kernels compiled into
// this library, and a blocking grid launch that runs every block's threads on the CPU.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace kiln_emu {

struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
};

// One `extern "C" __global__` kernel of cuda/*.cu, registered by the generated registry.
struct KernelInfo {
    const char* name;
    size_t params_bytes;    // the size of the kernel's one by-value parameter struct
    unsigned max_threads;   // its __launch_bounds__ (1024 when none)
    void (*invoke)(const void* params);  // calls the kernel body in the current emulated thread
};

// The kernel named `name`, or nullptr.
const KernelInfo* find_kernel(const char* name);

// Runs every block of the grid to completion (blocks spread over a few OS threads, the threads
// of a block as fibers). Returns "" on success, else what went wrong: a deadlock, a barrier or
// warp collective not reached by every thread it needs, a misuse of an emulated instruction.
// `params` points at `kernel.params_bytes` bytes (copied before this returns, like CUDA).
std::string run_grid(const KernelInfo& kernel, Dim3 grid, Dim3 block, unsigned dynamic_shared_bytes,
                     const void* params);

// The order in which a block's runnable threads resume after each synchronisation point.
// Forward and Reverse are deterministic; Random draws from `seed`. A race between threads
// shows as different results under different orders (and ThreadSanitizer names it).
enum class Schedule : int { Forward = 0, Reverse = 1, Random = 2 };
void set_schedule(Schedule schedule, uint64_t seed);

}  // namespace kiln_emu
