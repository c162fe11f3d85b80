// Fiber stacks and the x86-64 context switch (see fiber.h).
#include "fiber.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#if defined(__SANITIZE_ADDRESS__)
extern "C" void __asan_unpoison_memory_region(void const volatile* address, size_t size);
#endif

// The frame a switch leaves on the stack it leaves: MXCSR and the x87 control word (8 bytes),
// then rbp, rbx, r12-r15, then the return address.
asm(R"(
    .text
    .globl kiln_emu_switch
    .hidden kiln_emu_switch
    .type kiln_emu_switch, @function
kiln_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size kiln_emu_switch, .-kiln_emu_switch
)");

namespace kiln_emu {

FiberStack allocate_stack(size_t bytes) {
    void* memory = mmap(nullptr, bytes + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) {
        fprintf(stderr, "kiln CUDA emulator: cannot map a fiber stack of %zu bytes\n", bytes);
        abort();
    }
    mprotect(memory, 4096, PROT_NONE);
    return FiberStack{static_cast<unsigned char*>(memory), bytes};
}

void free_stack(FiberStack& stack) {
    if (stack.lowest) munmap(stack.lowest, stack.bytes + 4096);
    stack = FiberStack{};
}

void* prepare_fiber(const FiberStack& stack, void (*entry)()) {
#if defined(__SANITIZE_ADDRESS__)
    // Stacks are reused from block to block, and a finished fiber switches away without
    // returning: AddressSanitizer's redzones around its frames would stay poisoned.
    __asan_unpoison_memory_region(stack.bottom(), stack.bytes);
#endif
    uintptr_t top = reinterpret_cast<uintptr_t>(stack.bottom() + stack.bytes) & ~uintptr_t(15);
    uint64_t* frame = reinterpret_cast<uint64_t*>(top);
    // After the switch pops the frame and returns into `entry`, rsp is 8 below a 16-byte
    // boundary, as after a call: the slot above the return address is a null "caller".
    *--frame = 0;
    *--frame = reinterpret_cast<uint64_t>(entry);
    for (int i = 0; i < 6; i++) *--frame = 0;  // rbp, rbx, r12-r15
    uint32_t mxcsr;
    uint16_t fpu_control;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpu_control));
    *--frame = (uint64_t)mxcsr | ((uint64_t)fpu_control << 32);
    return frame;
}

}  // namespace kiln_emu
