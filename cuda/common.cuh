// Helpers every kernel shares: f16/bf16 conversion, 16-byte vector loads, warp and block
// reductions, and the macro that instantiates a kernel for both activation dtypes.
#pragma once
#if defined(KILN_EMULATOR)
#include "emu/cuda_emu.h"  // CUDA's device language for the CPU emulator
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif
#include <stdint.h>

#include <type_traits>

#include "params.h"

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(bf16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ bf16 from_float<bf16>(float v) { return __float2bfloat16_rn(v); }

// Eight 16-bit elements in one 16-byte access: the unit of every bandwidth-bound loop here.
// The pointer must be 16-byte aligned (rows whose length is a multiple of 8).
template <typename T>
__device__ __forceinline__ void load8(const T* p, float out[8]) {
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; i++) out[i] = to_float(v[i]);
}

// Same, through the read-only path and without keeping the line in L1: weights read once.
template <typename T>
__device__ __forceinline__ void load8_stream(const T* p, float out[8]) {
    uint4 raw = __ldcs(reinterpret_cast<const uint4*>(p));
    const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; i++) out[i] = to_float(v[i]);
}

template <typename T>
__device__ __forceinline__ void store8(T* p, const float in[8]) {
    uint4 raw;
    T* v = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = from_float<T>(in[i]);
    *reinterpret_cast<uint4*>(p) = raw;
}

// Columns col and col + 1 of one output row, from an mma accumulator pair. With an even row
// length the pair is one aligned 4- or 8-byte store; with an odd one (a 32001-token vocabulary)
// rows start at odd offsets, so the two are stored apart, and the last column alone.
__device__ __forceinline__ void store_pair(float* out, float v0, float v1) { *reinterpret_cast<float2*>(out) = make_float2(v0, v1); }
__device__ __forceinline__ void store_pair(__half* out, float v0, float v1) { *reinterpret_cast<__half2*>(out) = __floats2half2_rn(v0, v1); }
__device__ __forceinline__ void store_pair(bf16* out, float v0, float v1) { *reinterpret_cast<__nv_bfloat162*>(out) = __floats2bfloat162_rn(v0, v1); }
template <typename O>
__device__ __forceinline__ void store_columns(O* out, size_t at, float v0, float v1, bool second, bool aligned_pair) {
    if (aligned_pair) {
        store_pair(out + at, v0, v1);
    } else {
        out[at] = from_float<O>(v0);
        if (second) out[at + 1] = from_float<O>(v1);
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `scratch` holds 32 floats; the function synchronises before returning so it can be reused.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = lane < warps ? scratch[lane] : 0.0f;
    total = warp_sum(total);
    __syncthreads();
    return total;
}

// Instantiates `name<T>` as extern "C" kernels `name_f16` and `name_bf16` taking one params struct.
#define KILN_KERNEL_F16_BF16(name, Params, bounds)                                                   \
    extern "C" __global__ void __launch_bounds__(bounds) name##_f16(const Params p) { name<__half>(p); } \
    extern "C" __global__ void __launch_bounds__(bounds) name##_bf16(const Params p) { name<bf16>(p); }
