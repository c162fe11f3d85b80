// Embedding gather into the f32 residual stream: hidden[t] = table[token_ids[t]].
// Bandwidth-bound; one block per token, 16-byte loads. Launch: grid (n_tokens), block 128;
// hidden a multiple of 8. Token ids are validated on the host before a step.
#include "common.cuh"

template <typename T>
__device__ void embedding(const EmbeddingParams& p) {
    const uint32_t t = blockIdx.x;
    if (t >= p.n_tokens) return;
    const T* row = reinterpret_cast<const T*>(p.table) + (size_t)p.token_ids[t] * p.hidden;
    float* out = p.out + (size_t)t * p.hidden;
    for (uint32_t i = threadIdx.x * 8; i < p.hidden; i += blockDim.x * 8) {
        float v[8];
        load8(row + i, v);
        *reinterpret_cast<float4*>(out + i) = make_float4(v[0], v[1], v[2], v[3]);
        *reinterpret_cast<float4*>(out + i + 4) = make_float4(v[4], v[5], v[6], v[7]);
    }
}
KILN_KERNEL_F16_BF16(embedding, EmbeddingParams, 128)
