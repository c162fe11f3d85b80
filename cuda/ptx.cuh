// Every inline-PTX instruction the kernels use, in one place: asynchronous copies (cp.async),
// ldmatrix, the warp-level mma.sync and the Hopper warpgroup wgmma with its shared-memory
// descriptors. On the GPU each is its inline asm; with KILN_EMULATOR the same call runs the
// emulator's model of the instruction (cuda/emu/tensor.cpp), which follows the PTX ISA's
// documented fragment layouts, so one kernel source compiles for both.
#pragma once
#include <stdint.h>

#include <type_traits>

#if defined(KILN_EMULATOR)
namespace kiln_emu {
enum class MmaType : int { F16 = 0, Bf16 = 1 };
void cp_async16(uint32_t shared_address, const void* global, int source_bytes);
void cp_async_commit();
void cp_async_wait(int pending_groups);
void ldmatrix_x4(uint32_t fragments[4], uint32_t shared_address);
void mma_m16n8k16(MmaType type, float c[4], const uint32_t a[4], const uint32_t b[2]);
void wgmma_fence();
void wgmma_m64n128k16(MmaType type, float d[64], uint64_t descriptor_a, uint64_t descriptor_b, bool accumulate);
void wgmma_commit();
void wgmma_wait(int pending_groups);
}  // namespace kiln_emu
#endif

// Shared memory, declared through these two macros so that the emulator can place it in the
// block's shared window (poisoned at every block start, with real shared addresses):
//   KILN_SHARED(float, tile, [16][64]);   a static array (or a scalar with empty dims), 16-byte aligned
//   KILN_DYNAMIC_SHARED(bytes);           the launch's dynamic shared memory, 16-byte aligned
#if defined(KILN_EMULATOR)
#define KILN_SHARED(type, name, dims)                                                                   \
    static const char kiln_shared_site_##name = 0;                                                      \
    type(&name) dims = *reinterpret_cast<type(*) dims>(kiln_emu::static_shared(&kiln_shared_site_##name, \
                                                                              sizeof(type dims)))
#define KILN_DYNAMIC_SHARED(name) unsigned char* name = kiln_emu::dynamic_shared()
#else
#define KILN_SHARED(type, name, dims) __shared__ __align__(16) type name dims
#define KILN_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace ptx {

// The 32-bit shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
    return (uint32_t)__cvta_generic_to_shared(pointer);
}

// cp.async.cg.shared.global, 16 bytes (PTX ISA, section "cp.async"): copies `source_bytes` (0 or 16)
// bytes and zero-fills the rest. The copy belongs to the thread's open group until
// cp_async_commit; its data may land any time before cp_async_wait retires that group (the
// emulator makes it land exactly then, so a read before the wait sees poisoned memory).
__device__ __forceinline__ void cp_async16(uint32_t shared, const void* global, int source_bytes) {
#if defined(KILN_EMULATOR)
    kiln_emu::cp_async16(shared, global, source_bytes);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared), "l"(global), "r"(source_bytes));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(KILN_EMULATOR)
    kiln_emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(KILN_EMULATOR)
    kiln_emu::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16 (PTX ISA, section "ldmatrix"): lanes 8i..8i+7 give the row
// addresses of matrix i; each lane receives, in fragments[i], row lane/4 and columns
// 2 (lane % 4), +1 of matrix i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t fragments[4], uint32_t shared) {
#if defined(KILN_EMULATOR)
    kiln_emu::ldmatrix_x4(fragments, shared);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(fragments[0]), "=r"(fragments[1]), "=r"(fragments[2]), "=r"(fragments[3])
                 : "r"(shared));
#endif
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16} (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"): c += a · b over a warp, a 16x16 row-major, b 16x8
// column-major, c 16x8 f32.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(KILN_EMULATOR)
    kiln_emu::mma_m16n8k16(std::is_same<T, __half>::value ? kiln_emu::MmaType::F16 : kiln_emu::MmaType::Bf16, c, a, b);
#else
    if constexpr (std::is_same<T, __half>::value) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#endif
}

// fence.proxy.async.shared::cta: generic-proxy writes to shared memory (cp.async, st.shared)
// become visible to the async proxy that wgmma reads through. Nothing to do on the CPU.
__device__ __forceinline__ void fence_proxy_async_shared() {
#if !defined(KILN_EMULATOR)
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Shared-memory matrix descriptor for wgmma (PTX ISA, "Matrix Descriptor Format"
// of the wgmma section):
// bits 0-13 start address >> 4, 16-29 leading-dimension byte offset >> 4 (unused with this
// swizzle), 32-45 stride byte offset >> 4 (between 8-row atoms), 62-63 swizzle mode (1: 128 B).
__device__ __forceinline__ uint64_t wgmma_descriptor_sw128(uint32_t shared, uint32_t stride_bytes) {
    uint64_t descriptor = (uint64_t)((shared & 0x3FFFF) >> 4);
    descriptor |= (uint64_t)(16 >> 4) << 16;
    descriptor |= (uint64_t)(stride_bytes >> 4) << 32;
    descriptor |= (uint64_t)1 << 62;
    return descriptor;
}

__device__ __forceinline__ void wgmma_fence() {
#if defined(KILN_EMULATOR)
    kiln_emu::wgmma_fence();
#else
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit() {
#if defined(KILN_EMULATOR)
    kiln_emu::wgmma_commit();
#else
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if defined(KILN_EMULATOR)
    kiln_emu::wgmma_wait(N);
#else
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// Keeps the compiler from moving accumulator reads or writes across the wgmma fences and waits
// (wgmma writes them asynchronously; CUTLASS's warpgroup_fence_operand).
__device__ __forceinline__ void fence_operands(float d[64]) {
#if !defined(KILN_EMULATOR)
#pragma unroll
    for (int i = 0; i < 64; i++) asm volatile("" : "+f"(d[i])::"memory");
#endif
}

// wgmma.mma_async.sync.aligned.m64n128k16.f32.{f16,bf16} (PTX ISA, wgmma "Register Fragments"
// of the accumulator D for .m64nNk16): d (+)= A · Bᵀ for a warpgroup, A 64x16 and B 128x16 both K-major in
// shared memory behind descriptors; thread t of the warpgroup holds rows 16 (t / 32) + (t % 32) / 4
// (+8) and columns 8j + 2 (t % 4) (+1) in d[4j .. 4j + 3]. Asynchronous until wgmma_wait.
template <typename T>
__device__ __forceinline__ void wgmma_m64n128k16(float d[64], uint64_t descriptor_a, uint64_t descriptor_b, bool accumulate) {
#if defined(KILN_EMULATOR)
    kiln_emu::wgmma_m64n128k16(std::is_same<T, __half>::value ? kiln_emu::MmaType::F16 : kiln_emu::MmaType::Bf16, d,
                               descriptor_a, descriptor_b, accumulate);
#else
#define KILN_WGMMA_D                                                                                            \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),  \
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),   \
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),  \
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),  \
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),  \
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),  \
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),  \
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define KILN_WGMMA_REGS                                                                                         \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
    "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "  \
    "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
    if constexpr (std::is_same<T, __half>::value) {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " KILN_WGMMA_REGS ", %64, %65, p, 1, 1, 0, 0;\n}\n"
                     : KILN_WGMMA_D
                     : "l"(descriptor_a), "l"(descriptor_b), "r"((int)accumulate));
    } else {
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " KILN_WGMMA_REGS ", %64, %65, p, 1, 1, 0, 0;\n}\n"
                     : KILN_WGMMA_D
                     : "l"(descriptor_a), "l"(descriptor_b), "r"((int)accumulate));
    }
#undef KILN_WGMMA_D
#undef KILN_WGMMA_REGS
#endif
}

}  // namespace ptx
