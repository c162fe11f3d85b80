// Tensor-core GEMM for prefill and batched decode: out[m, n] = x[m, :] · w[n, :] (both operands
// K-contiguous, the "TN" layout mma.sync wants), fp16/bf16 inputs, f32 accumulation.
// Math-bound at large m: mma.sync m16n8k16 fed by ldmatrix from a 3-stage cp.async pipeline.
// Shared-memory rows are padded to 40 elements (80 bytes) so ldmatrix and cp.async hit eight
// different 16-byte bank groups with no swizzle. Out-of-range rows and k-chunks are zero-filled.
// Launch: grid (ceil(n / BN), ceil(m / BM)), block WARPS_M * WARPS_N * 32, dynamic shared memory
// STAGES * (BM + BN) * 80 bytes; k a multiple of 8; any n (odd n stores single
// columns).
#include "common.cuh"
#include "ptx.cuh"

namespace {
constexpr int BK = 32, STAGES = 3, LDS = BK + 8;

}  // namespace

template <typename T, int BM, int BN, int WARPS_M, int WARPS_N>
__device__ void gemm_tc(const GemmParams& p) {
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // one warp's tile
    constexpr int MT = WM / 16, NT = WN / 8;               // mma tiles per warp
    static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tiles are whole 16x16 ldmatrix blocks");
    KILN_DYNAMIC_SHARED(smem_raw);
    T* a_smem = reinterpret_cast<T*>(smem_raw);  // [STAGES][BM][LDS]
    T* b_smem = a_smem + STAGES * BM * LDS;      // [STAGES][BN][LDS]
    const T* x = reinterpret_cast<const T*>(p.x);
    const T* w = reinterpret_cast<const T*>(p.w);
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int warp_m = warp / WARPS_N, warp_n = warp % WARPS_N;
    const int k_tiles = (p.k + BK - 1) / BK;

    auto load_tile = [&](int stage, int kt) {
        const int k0 = kt * BK;
        for (int c = tid; c < BM * (BK / 8); c += THREADS) {
            const int r = c / (BK / 8), chunk = c % (BK / 8);
            const int gm = m0 + r, gk = k0 + chunk * 8;
            const bool inside = gm < (int)p.m && gk < (int)p.k;
            ptx::cp_async16(ptx::shared_address(&a_smem[(stage * BM + r) * LDS + chunk * 8]), inside ? x + (size_t)gm * p.k + gk : x, inside ? 16 : 0);
        }
        for (int c = tid; c < BN * (BK / 8); c += THREADS) {
            const int r = c / (BK / 8), chunk = c % (BK / 8);
            const int gn = n0 + r, gk = k0 + chunk * 8;
            const bool inside = gn < (int)p.n && gk < (int)p.k;
            ptx::cp_async16(ptx::shared_address(&b_smem[(stage * BN + r) * LDS + chunk * 8]), inside ? w + (size_t)gn * p.k + gk : w, inside ? 16 : 0);
        }
    };

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < k_tiles) load_tile(s, s);
        ptx::cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; kt++) {
        // Tile kt has landed, and every warp is done with the stage the next load overwrites.
        ptx::cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int next = kt + STAGES - 1;
        if (next < k_tiles) load_tile(next % STAGES, next);
        ptx::cp_async_commit();
        const T* a_tile = a_smem + (kt % STAGES) * BM * LDS;
        const T* b_tile = b_smem + (kt % STAGES) * BN * LDS;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            uint32_t a_frag[MT][4], b_frag[NT][2];
#pragma unroll
            for (int i = 0; i < MT; i++) {
                // Matrices: rows 0-7 / 8-15 at k 0-7, then the same rows at k 8-15.
                const int row = warp_m * WM + i * 16 + (lane & 15);
                ptx::ldmatrix_x4(a_frag[i], ptx::shared_address(a_tile + row * LDS + kk + (lane >> 4) * 8));
            }
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                // Matrices: n 0-7 at k 0-7 and 8-15, then n 8-15 at k 0-7 and 8-15.
                const int row = warp_n * WN + j * 8 + (lane & 7) + ((lane >> 4) << 3);
                uint32_t r[4];
                ptx::ldmatrix_x4(r, ptx::shared_address(b_tile + row * LDS + kk + ((lane >> 3) & 1) * 8));
                b_frag[j][0] = r[0], b_frag[j][1] = r[1], b_frag[j + 1][0] = r[2], b_frag[j + 1][1] = r[3];
            }
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < NT; j++) ptx::mma_m16n8k16<T>(acc[i][j], a_frag[i], b_frag[j]);
        }
    }
    ptx::cp_async_wait<0>();

#pragma unroll
    for (int i = 0; i < MT; i++) {
#pragma unroll
        for (int j = 0; j < NT; j++) {
            const int col = n0 + warp_n * WN + j * 8 + (lane & 3) * 2;
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const int row = m0 + warp_m * WM + i * 16 + (lane >> 2) + half * 8;
                if (row < (int)p.m && col < (int)p.n) {
                    const size_t at = (size_t)row * p.n + col;
                    const float v0 = acc[i][j][2 * half], v1 = acc[i][j][2 * half + 1];
                    if (p.out_f32) store_columns(reinterpret_cast<float*>(p.out), at, v0, v1, col + 1 < (int)p.n, p.n % 2 == 0);
                    else store_columns(reinterpret_cast<T*>(p.out), at, v0, v1, col + 1 < (int)p.n, p.n % 2 == 0);
                }
            }
        }
    }
}

// Large m (prefill): 128x128 tiles, 8 warps of 64x32.
extern "C" __global__ void __launch_bounds__(256) gemm_128x128_f16(const GemmParams p) { gemm_tc<__half, 128, 128, 2, 4>(p); }
extern "C" __global__ void __launch_bounds__(256) gemm_128x128_bf16(const GemmParams p) { gemm_tc<bf16, 128, 128, 2, 4>(p); }
// Small m (batched decode, short prefill chunks): 64x32 tiles, 4 warps of 32x16, so that even
// n = 4096 gives 128 blocks.
extern "C" __global__ void __launch_bounds__(128) gemm_64x32_f16(const GemmParams p) { gemm_tc<__half, 64, 32, 2, 2>(p); }
extern "C" __global__ void __launch_bounds__(128) gemm_64x32_bf16(const GemmParams p) { gemm_tc<bf16, 64, 32, 2, 2>(p); }
