// Hopper (sm_90a) GEMM for prefill: out[m, n] = x[m, :] · w[n, :] with wgmma, the warpgroup
// tensor-core instruction that mma.sync cannot match on H100. Math-bound at large m.
// Tiles 128x128x64: two warpgroups each own 64 rows and issue m64n128k16 wgmma with both operands
// read from shared memory through descriptors. Operands are staged by cp.async into the 128-byte
// swizzled K-major layout wgmma (and TMA) use: 16-byte chunk c of row r sits at chunk c ^ (r % 8)
// of its 128-byte row, rows stacked in 1024-byte atoms of 8. A 4-stage ring keeps loads in flight
// while the tensor cores work. Out-of-range rows and k-chunks are zero-filled.
// Compiled for sm_90a only (build.rs), loaded only on compute capability 9.0.
// Launch: grid (ceil(n / 128), ceil(m / 128)), block 256, dynamic shared memory 4 * 32 KiB + 1 KiB;
// k a multiple of 8, n even.
#include <type_traits>

#include "common.cuh"

namespace {
constexpr int BM = 128, BN = 128, BK = 64, STAGES = 4;
constexpr int TILE_BYTES = BM * BK * 2;  // 16 KiB, the same for the B tile (BN == BM)
constexpr int STAGE_BYTES = 2 * TILE_BYTES;

__device__ __forceinline__ void cp_async16(uint32_t smem, const void* global, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(global), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Shared-memory matrix descriptor: start address, leading offset (unused with swizzle), stride of
// 1024 bytes between 8-row atoms, 128-byte swizzle.
__device__ __forceinline__ uint64_t descriptor(uint32_t smem_address) {
    uint64_t desc = (uint64_t)((smem_address & 0x3FFFF) >> 4);
    desc |= (uint64_t)(16 >> 4) << 16;
    desc |= (uint64_t)(1024 >> 4) << 32;
    desc |= (uint64_t)1 << 62;
    return desc;
}

template <typename T>
__device__ __forceinline__ void wgmma_m64n128k16(float d[64], uint64_t desc_a, uint64_t desc_b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    if constexpr (std::is_same<T, __half>::value) {
            asm volatile(
                "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
                "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                : "l"(desc_a), "l"(desc_b), "r"(1));
    } else {
            asm volatile(
                "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                : "l"(desc_a), "l"(desc_b), "r"(1));
    }
#endif
}

// Keeps the compiler from moving accumulator reads or writes across the wgmma fences and waits
// (wgmma writes them asynchronously; CUTLASS's warpgroup_fence_operand).
__device__ __forceinline__ void fence_operands(float d[64]) {
#pragma unroll
    for (int i = 0; i < 64; i++) asm volatile("" : "+f"(d[i])::"memory");
}

__device__ __forceinline__ void store_pair(float* out, float v0, float v1) { *reinterpret_cast<float2*>(out) = make_float2(v0, v1); }
__device__ __forceinline__ void store_pair(__half* out, float v0, float v1) { *reinterpret_cast<__half2*>(out) = __floats2half2_rn(v0, v1); }
__device__ __forceinline__ void store_pair(bf16* out, float v0, float v1) { *reinterpret_cast<__nv_bfloat162*>(out) = __floats2bfloat162_rn(v0, v1); }
}  // namespace

template <typename T>
__device__ void gemm_wgmma(const GemmParams& p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ unsigned char smem_raw[];
    // Swizzle atoms need 1024-byte alignment; the launch asks for 1 KiB of slack.
    const uint32_t raw_base = (uint32_t)__cvta_generic_to_shared(smem_raw);
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
            cp_async16(a_base + offset, a_inside ? x + (size_t)gm * p.k + gk : x, a_inside ? 16 : 0);
            cp_async16(b_base + offset, b_inside ? w + (size_t)gn * p.k + gk : w, b_inside ? 16 : 0);
        }
    };

    float d[64];
#pragma unroll
    for (int i = 0; i < 64; i++) d[i] = 0.0f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < k_tiles) load_tile(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; kt++) {
        cp_async_wait<STAGES - 2>();
        // cp.async wrote through the generic proxy; wgmma reads through the async proxy.
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();  // tile kt landed for all threads; every warpgroup finished tile kt - 1
        const int next = kt + STAGES - 1;
        if (next < k_tiles) load_tile(next % STAGES, next);
        cp_async_commit();
        const uint32_t a_tile = base + (kt % STAGES) * STAGE_BYTES + warpgroup * 64 * 128;
        const uint32_t b_tile = base + (kt % STAGES) * STAGE_BYTES + TILE_BYTES;
        fence_operands(d);
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            // 16 k-elements are 32 bytes further along the swizzled rows.
            wgmma_m64n128k16<T>(d, descriptor(a_tile + kk * 32), descriptor(b_tile + kk * 32));
        }
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        fence_operands(d);
    }
    cp_async_wait<0>();

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
                if (p.out_f32) store_pair(reinterpret_cast<float*>(p.out) + at, d[4 * j + 2 * half], d[4 * j + 2 * half + 1]);
                else store_pair(reinterpret_cast<T*>(p.out) + at, d[4 * j + 2 * half], d[4 * j + 2 * half + 1]);
            }
        }
    }
#endif
}

extern "C" __global__ void __launch_bounds__(256, 1) gemm_wgmma_f16(const GemmParams p) { gemm_wgmma<__half>(p); }
extern "C" __global__ void __launch_bounds__(256, 1) gemm_wgmma_bf16(const GemmParams p) { gemm_wgmma<bf16>(p); }
