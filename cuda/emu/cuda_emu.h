// CUDA's device language for the CPU: what cuda/*.cu use of it, so that the same kernel sources
// compile as C++ (with KILN_EMULATOR defined) and run in the emulator (runtime.cpp): thread and
// block indices, __syncthreads as a barrier over the block, warp shuffles as per-warp
// rendezvous, __shared__ memory per block, f16/bf16 with round-to-nearest-even conversions.
// The tensor-core and async-copy instructions are emulated behind cuda/ptx.cuh.
//
// What this cannot show: the hardware's memory-model ordering (threads of a block run as fibers
// between synchronisation points, so they never interleave inside a phase), tensor-core
// rounding (products are summed in f32 in k order here), and anything about speed.
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <type_traits>

// Qualifiers: kernels are plain functions.
// build.rs preprocesses each file once with KILN_EMU_LIST_KERNELS to find its kernels, their
// parameter types and launch bounds by these markers.
#define __device__
#define __host__
#if defined(KILN_EMU_LIST_KERNELS)
#define __global__ kiln_emu_kernel_marker
#define __launch_bounds__(...) kiln_emu_bounds_marker(__VA_ARGS__)
#else
#define __global__
#define __launch_bounds__(...)
#endif
#define __forceinline__ inline __attribute__((always_inline))
// Static shared memory is declared with KILN_SHARED (cuda/ptx.cuh), which the emulator places in
// the block's shared window; a bare __shared__ would be shared by every block on an OS thread.
#define __shared__ declare_static_shared_memory_with_KILN_SHARED
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict

// ---------------------------------------------------------------------------------------------
// Thread and block geometry.
namespace kiln_emu {
struct uint3_ {
    unsigned x, y, z;
};
struct ThreadView {
    uint3_ thread_idx;
    uint3_ block_idx;
    uint3_ block_dim;
    uint3_ grid_dim;
};
// The running emulated thread (set by the scheduler on every switch).
extern thread_local const ThreadView* current_view;

void syncthreads();
void syncwarp(unsigned mask);
uint64_t shuffle(unsigned mask, uint64_t bits, int source_lane, bool xor_lane);
// Shared memory: the block's window (static then dynamic shared memory) and its 32-bit addresses.
unsigned char* dynamic_shared();
void* static_shared(const void* declaration, size_t bytes);
uint32_t shared_address(const void* pointer);
unsigned char* shared_pointer(uint32_t address, size_t bytes);
[[noreturn]] void fail(const char* message);
}  // namespace kiln_emu

#define threadIdx (kiln_emu::current_view->thread_idx)
#define blockIdx (kiln_emu::current_view->block_idx)
#define blockDim (kiln_emu::current_view->block_dim)
#define gridDim (kiln_emu::current_view->grid_dim)

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

// ---------------------------------------------------------------------------------------------
// Vector types.
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }

// ---------------------------------------------------------------------------------------------
// f16 and bf16: storage types with CUDA's conversions (round to nearest, ties to even).
struct __half {
    uint16_t bits;
};
struct __nv_bfloat16 {
    uint16_t bits;
};
struct alignas(4) __half2 {
    __half x, y;
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};

namespace kiln_emu {
inline uint32_t float_bits(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
}
inline float bits_float(uint32_t u) {
    float v;
    memcpy(&v, &u, 4);
    return v;
}
inline uint16_t f32_to_f16(float value) {
    const uint32_t u = float_bits(value);
    const uint16_t sign = (u >> 16) & 0x8000u;
    const uint32_t abs = u & 0x7FFFFFFFu;
    if (abs > 0x7F800000u) return sign | 0x7E00u;    // NaN stays a (quiet) NaN
    if (abs >= 0x477FF000u) return sign | 0x7C00u;   // rounds to infinity (>= 65520)
    if (abs >= 0x38800000u) {                        // normal f16
        const uint32_t mantissa = abs & 0x7FFFFFu;
        const uint32_t exponent = (abs >> 23) - 112;  // rebias 127 -> 15
        uint32_t half = (exponent << 10) | (mantissa >> 13);
        const uint32_t rest = mantissa & 0x1FFFu;
        if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) half++;  // may carry into the exponent
        return sign | (uint16_t)half;
    }
    // Subnormal f16 (or zero): value / 2^-24 rounded to an integer, ties to even.
    const int shift = 126 - (int)(abs >> 23);  // 14 + (113 - exponent)
    if (shift > 24) return sign;                 // below half the smallest subnormal
    const uint32_t mantissa = (abs & 0x7FFFFFu) | 0x800000u;
    const uint32_t half = mantissa >> (shift);
    const uint32_t rest = mantissa & ((1u << shift) - 1u), midpoint = 1u << (shift - 1);
    return sign | (uint16_t)(half + (rest > midpoint || (rest == midpoint && (half & 1u)) ? 1u : 0u));
}
inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
    if (exponent == 0x1Fu) return bits_float(sign | 0x7F800000u | (mantissa << 13));
    if (exponent != 0) return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
    const float magnitude = (float)mantissa * 5.9604644775390625e-8f;  // 2^-24
    return sign ? -magnitude : magnitude;
}
inline uint16_t f32_to_bf16(float value) {
    const uint32_t u = float_bits(value);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_to_f32(uint16_t b) { return bits_float((uint32_t)b << 16); }
}  // namespace kiln_emu

inline float __half2float(__half h) { return kiln_emu::f16_to_f32(h.bits); }
inline __half __float2half_rn(float v) { return __half{kiln_emu::f32_to_f16(v)}; }
inline float __bfloat162float(__nv_bfloat16 b) { return kiln_emu::bf16_to_f32(b.bits); }
inline __nv_bfloat16 __float2bfloat16_rn(float v) { return __nv_bfloat16{kiln_emu::f32_to_bf16(v)}; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__float2half_rn(a), __float2half_rn(b)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return __nv_bfloat162{__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}

// ---------------------------------------------------------------------------------------------
// Arithmetic intrinsics. The emulator is compiled with -ffp-contract=off, so the _rn forms are
// the single rounded operations they name; __expf is the exact expf (the GPU's is approximate).
inline float __expf(float v) { return expf(v); }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline uint32_t __float_as_uint(float v) { return kiln_emu::float_bits(v); }
inline float __uint_as_float(uint32_t u) { return kiln_emu::bits_float(u); }
using std::isfinite;
using std::isnan;
template <typename T>
inline T min(T a, T b) {
    return a < b ? a : b;
}
template <typename T>
inline T max(T a, T b) {
    return a > b ? a : b;
}

// Streaming load: a plain load here (the cache hint has no meaning on the CPU).
template <typename T>
inline T __ldcs(const T* p) {
    return *p;
}

inline size_t __cvta_generic_to_shared(const void* p) { return kiln_emu::shared_address(p); }

// Atomics: fibers of one block never run at once, but blocks run on several OS threads.
template <typename T>
inline T kiln_emu_atomic_add_float(T* address, T value) {
    T old, sum;
    __atomic_load(address, &old, __ATOMIC_RELAXED);
    do {
        sum = old + value;
    } while (!__atomic_compare_exchange(address, &old, &sum, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
}
inline double atomicAdd(double* address, double value) { return kiln_emu_atomic_add_float(address, value); }
inline float atomicAdd(float* address, float value) { return kiln_emu_atomic_add_float(address, value); }
inline unsigned atomicAdd(unsigned* address, unsigned value) {
    return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
}

// ---------------------------------------------------------------------------------------------
// Synchronisation and warp exchange.
inline void __syncthreads() { kiln_emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu) { kiln_emu::syncwarp(mask); }

template <typename T>
inline T kiln_emu_shuffle(unsigned mask, T value, int lane, bool xor_lane) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffles move at most 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &value, sizeof(T));
    bits = kiln_emu::shuffle(mask, bits, lane, xor_lane);
    T out;
    memcpy(&out, &bits, sizeof(T));
    return out;
}
template <typename T>
inline T __shfl_sync(unsigned mask, T value, int source_lane, int width = 32) {
    if (width != 32) kiln_emu::fail("__shfl_sync with a width other than 32 is not emulated");
    return kiln_emu_shuffle(mask, value, source_lane, false);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
    if (width != 32) kiln_emu::fail("__shfl_xor_sync with a width other than 32 is not emulated");
    return kiln_emu_shuffle(mask, value, lane_mask, true);
}
