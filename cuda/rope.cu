// RoPE fused with the KV-cache write, applied to the output of the fused QKV projection:
// q is rotated into q_out, k is rotated and v copied into their paged-cache slots.
// Rotate-half layout (dimension i pairs with i + head_dim/2), angles in f32 as Hugging Face
// computes them. Tiny work, latency-bound. Launch: grid (n_tokens), block 128.
#include "common.cuh"

template <typename T>
__device__ void rope_kv_write(const RopeKvParams& p) {
    const uint32_t t = blockIdx.x;
    if (t >= p.n_tokens) return;
    const uint32_t seq = p.token_seq[t];
    if (seq == KILN_NONE) return;  // padding of a captured batch bucket: no cache slot
    const uint32_t position = p.positions[t];
    const uint32_t block = p.block_tables[(size_t)seq * p.max_blocks_per_seq + position / p.block_size];
    const uint32_t offset = position % p.block_size;
    const uint32_t hd = p.head_dim, half = hd / 2;
    const uint32_t q_dim = p.num_heads * hd, kv_dim = p.num_kv_heads * hd;
    const T* row = reinterpret_cast<const T*>(p.qkv) + (size_t)t * (q_dim + 2 * kv_dim);
    T* q_out = reinterpret_cast<T*>(p.q_out) + (size_t)t * q_dim;
    T* k_cache = reinterpret_cast<T*>(p.k_cache);
    T* v_cache = reinterpret_cast<T*>(p.v_cache);
    const uint32_t q_pairs = p.num_heads * half, k_pairs = p.num_kv_heads * half;
    for (uint32_t i = threadIdx.x; i < q_pairs + k_pairs + kv_dim; i += blockDim.x) {
        if (i < q_pairs + k_pairs) {
            const bool is_q = i < q_pairs;
            const uint32_t pair = is_q ? i : i - q_pairs;
            const uint32_t head = pair / half, j = pair % half;
            const T* src = row + (is_q ? 0 : q_dim) + head * hd;
            float sin_v, cos_v;
            sincosf((float)position * p.inv_freq[j], &sin_v, &cos_v);
            const float a = to_float(src[j]), b = to_float(src[j + half]);
            T* dst = is_q ? q_out + head * hd
                          : k_cache + (((size_t)block * p.num_kv_heads + head) * p.block_size + offset) * hd;
            dst[j] = from_float<T>(a * cos_v - b * sin_v);
            dst[j + half] = from_float<T>(b * cos_v + a * sin_v);
        } else {
            const uint32_t e = i - q_pairs - k_pairs, head = e / hd, d = e % hd;
            v_cache[(((size_t)block * p.num_kv_heads + head) * p.block_size + offset) * hd + d] = row[q_dim + kv_dim + e];
        }
    }
}
KILN_KERNEL_F16_BF16(rope_kv_write, RopeKvParams, 128)
