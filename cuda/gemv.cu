// Decode projection for 1..8 token rows: out[m, n] = x[m, :] · w[n, :], f32 accumulation.
// Bandwidth-bound: every weight is read once, in 16-byte streaming loads, by one warp per weight
// row; the few x rows are re-read from L1/L2 and cost no DRAM traffic. No split-K: a warp per
// row already gives thousands of independent warps for every Llama projection (N >= 2048).
// Launch: grid (ceil(n / 8)), block 256 (8 warps = 8 weight rows); k a multiple of 8.
#include "common.cuh"

template <typename T, int M>
__device__ void gemv(const GemmParams& p) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint32_t n = blockIdx.x * 8 + warp;
    if (n >= p.n) return;
    const T* x = reinterpret_cast<const T*>(p.x);
    const T* w_row = reinterpret_cast<const T*>(p.w) + (size_t)n * p.k;
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; m++) acc[m] = 0.0f;
#pragma unroll 4
    for (uint32_t k = lane * 8; k < p.k; k += 32 * 8) {
        float w[8];
        load8_stream(w_row + k, w);
#pragma unroll
        for (int m = 0; m < M; m++) {
            float xv[8];
            load8(x + (size_t)m * p.k + k, xv);
#pragma unroll
            for (int i = 0; i < 8; i++) acc[m] = fmaf(xv[i], w[i], acc[m]);
        }
    }
#pragma unroll
    for (int m = 0; m < M; m++) {
        const float total = warp_sum(acc[m]);
        if (lane == m) {
            if (p.out_f32) reinterpret_cast<float*>(p.out)[(size_t)m * p.n + n] = total;
            else reinterpret_cast<T*>(p.out)[(size_t)m * p.n + n] = from_float<T>(total);
        }
    }
}

#define KILN_GEMV(M)                                                                                     \
    extern "C" __global__ void __launch_bounds__(256) gemv_m##M##_f16(const GemmParams p) { gemv<__half, M>(p); } \
    extern "C" __global__ void __launch_bounds__(256) gemv_m##M##_bf16(const GemmParams p) { gemv<bf16, M>(p); }
KILN_GEMV(1)
KILN_GEMV(2)
KILN_GEMV(3)
KILN_GEMV(4)
KILN_GEMV(5)
KILN_GEMV(6)
KILN_GEMV(7)
KILN_GEMV(8)
