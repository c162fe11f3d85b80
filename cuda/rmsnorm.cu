// RMSNorm fused with the residual add: residual += delta; out = residual / rms(residual) * weight.
// Bandwidth-bound: one block per row reads the f32 residual (and delta) and writes one T row.
// Launch: grid (n_rows), block 256; dim a multiple of 4.
#include "common.cuh"
#include "ptx.cuh"

template <typename T>
__device__ void rmsnorm_residual(const RmsNormParams& p) {
    KILN_SHARED(float, scratch, [32]);
    const uint32_t r = blockIdx.x;
    if (r >= p.n_rows) return;
    const uint32_t src = p.row_index ? p.row_index[r] : r;
    // Rows gathered through row_index are only read: their residual is not needed afterwards.
    const bool write_back = p.delta != nullptr && p.row_index == nullptr;
    float* x = p.residual + (size_t)src * p.dim;
    const float* d = p.delta ? p.delta + (size_t)src * p.dim : nullptr;
    float sum_squares = 0.0f;
    for (uint32_t i = threadIdx.x * 4; i < p.dim; i += blockDim.x * 4) {
        float4 v = *reinterpret_cast<const float4*>(x + i);
        if (d) {
            const float4 dv = *reinterpret_cast<const float4*>(d + i);
            v.x += dv.x, v.y += dv.y, v.z += dv.z, v.w += dv.w;
            if (write_back) *reinterpret_cast<float4*>(x + i) = v;
        }
        sum_squares += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    const float total = block_sum(sum_squares, scratch);
    const float scale = 1.0f / sqrtf(total / (float)p.dim + p.eps);
    T* out = reinterpret_cast<T*>(p.out) + (size_t)r * p.dim;
    for (uint32_t i = threadIdx.x * 4; i < p.dim; i += blockDim.x * 4) {
        float4 v = *reinterpret_cast<const float4*>(x + i);
        if (d && !write_back) {
            const float4 dv = *reinterpret_cast<const float4*>(d + i);
            v.x += dv.x, v.y += dv.y, v.z += dv.z, v.w += dv.w;
        }
        const float4 w = *reinterpret_cast<const float4*>(p.weight + i);
        out[i] = from_float<T>(v.x * scale * w.x);
        out[i + 1] = from_float<T>(v.y * scale * w.y);
        out[i + 2] = from_float<T>(v.z * scale * w.z);
        out[i + 3] = from_float<T>(v.w * scale * w.w);
    }
}
KILN_KERNEL_F16_BF16(rmsnorm_residual, RmsNormParams, 256)
