// SwiGLU: out = silu(gate) * up over the fused gate/up projection [n_tokens, 2 * ffn].
// Bandwidth-bound elementwise; 8 elements per thread. Launch: grid-stride, block 256; ffn a
// multiple of 8.
#include "common.cuh"

template <typename T>
__device__ void silu_mul(const SiluMulParams& p) {
    const size_t vectors_per_row = p.ffn / 8;
    const size_t total = (size_t)p.n_tokens * vectors_per_row;
    const T* gate_up = reinterpret_cast<const T*>(p.gate_up);
    T* out = reinterpret_cast<T*>(p.out);
    for (size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x; v < total; v += (size_t)gridDim.x * blockDim.x) {
        const size_t t = v / vectors_per_row, i = (v % vectors_per_row) * 8;
        float g[8], u[8], o[8];
        load8(gate_up + t * 2 * p.ffn + i, g);
        load8(gate_up + t * 2 * p.ffn + p.ffn + i, u);
#pragma unroll
        for (int j = 0; j < 8; j++) o[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
        store8(out + t * p.ffn + i, o);
    }
}
KILN_KERNEL_F16_BF16(silu_mul, SiluMulParams, 256)
