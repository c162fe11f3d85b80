// Device-side seeded weights: value i is model/random.rs's seeded_values(seed)[i] * scale + offset,
// bit for bit (splitmix64 of seed + (i + 1) * golden ratio), so a benchmark of a real geometry
// builds its weights in milliseconds and a test can rebuild them on the host. Launch: grid-stride.
#include "common.cuh"

__device__ __forceinline__ float seeded_value(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    // Same operation order as the Rust code; explicit roundings keep nvcc from fusing them.
    return __fsub_rn(__fmul_rn(__fdiv_rn((float)(z >> 40), 16777216.0f), 2.0f), 1.0f);
}

template <typename T>
__device__ void fill_random(const FillRandomParams& p) {
    T* out = reinterpret_cast<T*>(p.out);
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += (uint64_t)gridDim.x * blockDim.x) {
        out[i] = from_float<T>(__fadd_rn(__fmul_rn(seeded_value(p.seed, i), p.scale), p.offset));
    }
}
KILN_KERNEL_F16_BF16(fill_random, FillRandomParams, 256)
extern "C" __global__ void __launch_bounds__(256) fill_random_f32(const FillRandomParams p) { fill_random<float>(p); }
