// Hopper (sm_90a) GEMM for prefill: out[m, n] = x[m, :] · w[n, :] with wgmma, the warpgroup
// tensor-core instruction that mma.sync cannot match on H100. Math-bound at large m.
// Tiles 128x128x64: two warpgroups each own 64 rows and issue m64n128k16 wgmma with both operands
// read from shared memory through descriptors. Operands are staged by cp.async into the 128-byte
// swizzled K-major layout wgmma (and TMA) use: 16-byte chunk c of row r sits at chunk c ^ (r % 8)
// of its 128-byte row, rows stacked in 1024-byte atoms of 8. A 4-stage ring keeps loads in flight
// while the tensor cores work. Out-of-range rows and k-chunks are zero-filled.
// Compiled for sm_90a only (build.rs), loaded only on compute capability 9.0.
// Launch: grid (ceil(n / 128), ceil(m / 128)), block 256, dynamic shared memory 4 * 32 KiB + 1 KiB;
// k a multiple of 8; any n (odd n stores single columns).
#include "common.cuh"
#include "ptx.cuh"

// wgmma exists on sm_90a alone: compiled for any other target these kernels would be empty (or
// fail in ptxas), so refuse at compile time. build.rs gives *_sm90.cu files only sm_90a.
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#error "gemm_sm90.cu uses wgmma and must be compiled for sm_90a only"
#endif

namespace {
constexpr int BM = 128, BN = 128, BK = 64, STAGES = 4;
constexpr int TILE_BYTES = BM * BK * 2;  // 16 KiB, the same for the B tile (BN == BM)
constexpr int STAGE_BYTES = 2 * TILE_BYTES;
constexpr uint32_t ATOM_BYTES = 1024;  // 8 swizzled rows of 128 bytes

}  // namespace

template <typename T>
__device__ void gemm_wgmma(const GemmParams& p) {
    KILN_DYNAMIC_SHARED(smem_raw);
    // Swizzle atoms need 1024-byte alignment; the launch asks for 1 KiB of slack.
    const uint32_t raw_base = ptx::shared_address(smem_raw);
    const uint32_t base = (raw_base + 1023) & ~1023u;
    const T* x = reinterpret_cast<const T*>(p.x);
    const T* w = reinterpret_cast<const T*>(p.w);
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int tid = threadIdx.x, warpgroup = tid / 128;
    const int k_tiles = (p.k + BK - 1) / BK;

    auto load_tile = [&](int stage, int kt) {
        const int k0 = kt * BK;
        const uint32_t a_base = base + stage * STAGE_BYTES, b_base = a_base + TILE_BYTES;
#pragma unroll
        for (int i = 0; i < (BM * BK / 8) / 256; i++) {
            const int c = tid + i * 256, r = c / 8, chunk = c % 8;
            const uint32_t offset = r * 128 + ((chunk ^ (r & 7)) * 16);
            const int gk = k0 + chunk * 8;
            const int gm = m0 + r, gn = n0 + r;
            const bool a_inside = gm < (int)p.m && gk < (int)p.k;
            const bool b_inside = gn < (int)p.n && gk < (int)p.k;
            ptx::cp_async16(a_base + offset, a_inside ? x + (size_t)gm * p.k + gk : x, a_inside ? 16 : 0);
            ptx::cp_async16(b_base + offset, b_inside ? w + (size_t)gn * p.k + gk : w, b_inside ? 16 : 0);
        }
    };

    float d[64];
#pragma unroll
    for (int i = 0; i < 64; i++) d[i] = 0.0f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < k_tiles) load_tile(s, s);
        ptx::cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; kt++) {
        ptx::cp_async_wait<STAGES - 2>();
        // cp.async wrote through the generic proxy; wgmma reads through the async proxy.
        ptx::fence_proxy_async_shared();
        __syncthreads();  // tile kt landed for all threads; every warpgroup finished tile kt - 1
        const int next = kt + STAGES - 1;
        if (next < k_tiles) load_tile(next % STAGES, next);
        ptx::cp_async_commit();
        const uint32_t a_tile = base + (kt % STAGES) * STAGE_BYTES + warpgroup * 64 * 128;
        const uint32_t b_tile = base + (kt % STAGES) * STAGE_BYTES + TILE_BYTES;
        ptx::fence_operands(d);
        ptx::wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            // 16 k-elements are 32 bytes further along the swizzled rows.
            ptx::wgmma_m64n128k16<T>(d, ptx::wgmma_descriptor_sw128(a_tile + kk * 32, ATOM_BYTES),
                                     ptx::wgmma_descriptor_sw128(b_tile + kk * 32, ATOM_BYTES), true);
        }
        ptx::wgmma_commit();
        ptx::wgmma_wait<0>();
        ptx::fence_operands(d);
    }
    ptx::cp_async_wait<0>();

    // Accumulator layout of m64nN: warp w of the warpgroup owns rows 16w..16w+15; registers
    // 4j..4j+3 hold columns 8j + 2 (lane % 4) + {0, 1} of rows lane / 4 and lane / 4 + 8.
    const int warp = (tid % 128) / 32, lane = tid % 32;
    const int row_base = m0 + warpgroup * 64 + warp * 16 + lane / 4;
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
        const int col = n0 + j * 8 + (lane % 4) * 2;
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int row = row_base + half * 8;
            if (row < (int)p.m && col < (int)p.n) {
                const size_t at = (size_t)row * p.n + col;
                const float v0 = d[4 * j + 2 * half], v1 = d[4 * j + 2 * half + 1];
                if (p.out_f32) store_columns(reinterpret_cast<float*>(p.out), at, v0, v1, col + 1 < (int)p.n, p.n % 2 == 0);
                else store_columns(reinterpret_cast<T*>(p.out), at, v0, v1, col + 1 < (int)p.n, p.n % 2 == 0);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256, 1) gemm_wgmma_f16(const GemmParams p) { gemm_wgmma<__half>(p); }
extern "C" __global__ void __launch_bounds__(256, 1) gemm_wgmma_bf16(const GemmParams p) { gemm_wgmma<bf16>(p); }
