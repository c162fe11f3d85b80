// Fibers for the emulator: a stack per emulated CUDA thread and a context switch that saves only
// the callee-saved registers (a few nanoseconds, where glibc's swapcontext makes a system call
// per switch). x86-64 System V only, which is what kiln's build and CI machines are.
#pragma once
#include <cstddef>

#if !defined(__x86_64__)
#error "the kiln CUDA emulator's fibers are written for x86-64"
#endif

namespace kiln_emu {

struct FiberStack {
    unsigned char* lowest = nullptr;  // the guard page
    size_t bytes = 0;                 // usable, above the guard page
    unsigned char* bottom() const { return lowest + 4096; }
};

// Maps a stack with a guard page below it (an overflow faults instead of corrupting memory).
FiberStack allocate_stack(size_t bytes);
void free_stack(FiberStack& stack);

// Prepares `stack` so that the first switch to the returned stack pointer calls `entry()`,
// which must never return (it switches away for the last time instead).
void* prepare_fiber(const FiberStack& stack, void (*entry)());

}  // namespace kiln_emu

// Saves the current context's stack pointer in *save and resumes the context at `next`.
extern "C" void kiln_emu_switch(void** save, void* next);
