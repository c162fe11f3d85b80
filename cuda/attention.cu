// Causal grouped-query attention over the paged KV cache (layout per layer
// [num_blocks, num_kv_heads, block_size, head_dim], so one head's block is contiguous).
// Query head h reads KV head h / (num_heads / num_kv_heads). Online softmax in f32 (running max
// m, running sum l, rescaled accumulator), so scores are never stored.
//
// attention_prefill: flash-attention style. A block takes 16 queries of one sequence and one
// head, stages 32 keys and values at a time in shared memory for all 16, and walks the keys up
// to its last query's position. Launch: grid (ceil(max seq tokens / 16), n_seqs, num_heads),
// block 128 (4 warps x 4 queries; lane j scores key j of the tile, then owns head_dim/32 output
// dimensions).
//
// attention_decode: flash-decoding. One warp per (query token, head, split); each split takes an
// equal share of its token's visible keys (so the grid is fixed for a captured graph while
// contexts grow) and writes (m, l, acc) to `partial`; attention_reduce merges the splits. With
// n_splits = 1 the warp writes the output itself. Launch: grid (n_tokens, ceil(num_heads / 4),
// n_splits), block 128. Memory-bound on the K/V reads.
#include "common.cuh"
#include "ptx.cuh"

namespace {
// Visible keys of a query at `position`: [first, position].
__device__ __forceinline__ uint32_t first_visible(uint32_t position, uint32_t window) {
    return (window != 0 && position + 1 > window) ? position + 1 - window : 0;
}

template <typename T, int DPL>
__device__ __forceinline__ void load_dims(const T* p, float out[DPL]) {
#pragma unroll
    for (int i = 0; i < DPL; i++) out[i] = to_float(p[i]);
}

// A lane's DPL consecutive 16-bit values of a V row in one 4-byte (DPL 2) or 8-byte (DPL 4) load,
// so a warp reads a whole row in one instruction. p is aligned: rows are head_dim * 2 bytes.
template <typename T, int DPL>
__device__ __forceinline__ void load_dims_vector(const T* p, float out[DPL]) {
    static_assert(DPL == 2 || DPL == 4, "head_dim 64 or 128");
    using Word = typename std::conditional<DPL == 2, uint32_t, uint2>::type;
    const Word raw = *reinterpret_cast<const Word*>(p);
    const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < DPL; i++) out[i] = to_float(v[i]);
}
}  // namespace

template <typename T, int HD>
__device__ void attention_prefill(const AttentionParams& p) {
    constexpr int QT = 16, QW = 4, KT = 32, DPL = HD / 32, ROW = HD + 8;  // rows padded by 16 bytes
    KILN_SHARED(T, k_tile, [KT * ROW]);
    KILN_SHARED(T, v_tile, [KT * ROW]);
    KILN_SHARED(float, q_tile, [QT][HD]);
    const uint32_t tile = blockIdx.x, seq = blockIdx.y, head = blockIdx.z;
    const uint32_t count = p.seq_token_count[seq];
    if (tile * QT >= count) return;  // the whole block leaves together
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint32_t start = p.seq_token_start[seq] + tile * QT;
    const uint32_t queries = min((uint32_t)QT, count - tile * QT);
    const uint32_t kv_head = head / (p.num_heads / p.num_kv_heads);
    const uint32_t* table = p.block_tables + (size_t)seq * p.max_blocks_per_seq;
    const T* q = reinterpret_cast<const T*>(p.q);
    const T* k_cache = reinterpret_cast<const T*>(p.k_cache);
    const T* v_cache = reinterpret_cast<const T*>(p.v_cache);

    for (int i = threadIdx.x; i < QT * HD; i += blockDim.x) {
        const int qi = i / HD, d = i % HD;
        q_tile[qi][d] = qi < (int)queries ? to_float(q[((size_t)(start + qi) * p.num_heads + head) * HD + d]) * p.scale : 0.0f;
    }
    // A sequence's tokens in a step have consecutive positions.
    const uint32_t first_position = p.positions[start];
    const uint32_t last_position = p.positions[start + queries - 1];
    const uint32_t key_begin = first_visible(first_position, p.sliding_window);

    float m[QW], l[QW], acc[QW][DPL];
    uint32_t q_first[QW], q_last[QW];
#pragma unroll
    for (int j = 0; j < QW; j++) {
        m[j] = -INFINITY, l[j] = 0.0f;
        q_last[j] = first_position + warp * QW + j;
        q_first[j] = first_visible(q_last[j], p.sliding_window);
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[j][i] = 0.0f;
    }

    for (uint32_t base = key_begin; base <= last_position; base += KT) {
        __syncthreads();  // the previous tile is consumed (and q_tile is written, the first time)
        for (int c = threadIdx.x; c < KT * HD / 8; c += blockDim.x) {
            const int r = c / (HD / 8), d = (c % (HD / 8)) * 8;
            const uint32_t position = base + r;
            uint4 k_raw = make_uint4(0, 0, 0, 0), v_raw = make_uint4(0, 0, 0, 0);
            if (position <= last_position) {
                const uint32_t block = table[position / p.block_size];
                const size_t at = (((size_t)block * p.num_kv_heads + kv_head) * p.block_size + position % p.block_size) * HD + d;
                k_raw = *reinterpret_cast<const uint4*>(k_cache + at);
                v_raw = *reinterpret_cast<const uint4*>(v_cache + at);
            }
            *reinterpret_cast<uint4*>(&k_tile[r * ROW + d]) = k_raw;
            *reinterpret_cast<uint4*>(&v_tile[r * ROW + d]) = v_raw;
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < QW; j++) {
            const int qi = warp * QW + j;
            if (qi >= (int)queries) continue;  // warp-uniform
            const uint32_t key = base + lane;
            const bool visible = key >= q_first[j] && key <= q_last[j];
            float score = -INFINITY;
            if (visible) {
                float s = 0.0f;
#pragma unroll
                for (int d = 0; d < HD; d += 8) {
                    float kv[8];
                    load8(&k_tile[lane * ROW + d], kv);
#pragma unroll
                    for (int i = 0; i < 8; i++) s = fmaf(q_tile[qi][d + i], kv[i], s);
                }
                score = s;
            }
            const float tile_max = warp_max(score);
            if (tile_max == -INFINITY) continue;  // nothing visible in this tile for this query
            const float new_m = fmaxf(m[j], tile_max);
            const float correction = __expf(m[j] - new_m);
            const float prob = visible ? __expf(score - new_m) : 0.0f;
            l[j] = l[j] * correction + warp_sum(prob);
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[j][i] *= correction;
#pragma unroll 8
            for (int r = 0; r < KT; r++) {
                const float pr = __shfl_sync(0xffffffffu, prob, r);
                float v[DPL];
                load_dims<T, DPL>(&v_tile[r * ROW + lane * DPL], v);
#pragma unroll
                for (int i = 0; i < DPL; i++) acc[j][i] = fmaf(pr, v[i], acc[j][i]);
            }
            m[j] = new_m;
        }
    }
    T* out = reinterpret_cast<T*>(p.out);
#pragma unroll
    for (int j = 0; j < QW; j++) {
        const int qi = warp * QW + j;
        if (qi >= (int)queries) continue;
        T* o = out + ((size_t)(start + qi) * p.num_heads + head) * HD + lane * DPL;
#pragma unroll
        for (int i = 0; i < DPL; i++) o[i] = from_float<T>(acc[j][i] / l[j]);
    }
}

template <typename T, int HD>
__device__ void attention_decode(const AttentionParams& p) {
    constexpr int DPL = HD / 32;
    KILN_SHARED(float, q_shared, [4][HD]);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint32_t t = blockIdx.x, head = blockIdx.y * 4 + warp, split = blockIdx.z;
    if (head >= p.num_heads) return;  // no block-wide barrier below
    const uint32_t seq = p.token_seq[t];
    float m = -INFINITY, l = 0.0f, acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[i] = 0.0f;
    if (seq != KILN_NONE) {
        const uint32_t position = p.positions[t];
        const uint32_t first = first_visible(position, p.sliding_window), end = position + 1;
        const uint32_t share = (end - first + p.n_splits - 1) / p.n_splits;
        const uint32_t begin = first + split * share, stop = min(end, begin + share);
        const uint32_t kv_head = head / (p.num_heads / p.num_kv_heads);
        const uint32_t* table = p.block_tables + (size_t)seq * p.max_blocks_per_seq;
        const T* k_cache = reinterpret_cast<const T*>(p.k_cache);
        const T* v_cache = reinterpret_cast<const T*>(p.v_cache);
        const T* q = reinterpret_cast<const T*>(p.q) + ((size_t)t * p.num_heads + head) * HD;
        for (int d = lane; d < HD; d += 32) q_shared[warp][d] = to_float(q[d]) * p.scale;
        __syncwarp();
        for (uint32_t base = begin; base < stop; base += 32) {
            const uint32_t key = base + lane;
            float score = -INFINITY;
            if (key < stop) {
                const uint32_t block = table[key / p.block_size];
                const T* k_row = k_cache + (((size_t)block * p.num_kv_heads + kv_head) * p.block_size + key % p.block_size) * HD;
                float s = 0.0f;
#pragma unroll
                for (int d = 0; d < HD; d += 8) {
                    float kv[8];
                    load8(k_row + d, kv);
#pragma unroll
                    for (int i = 0; i < 8; i++) s = fmaf(q_shared[warp][d + i], kv[i], s);
                }
                score = s;
            }
            const float new_m = fmaxf(m, warp_max(score));  // key `base` is always visible
            const float correction = __expf(m - new_m);
            const float prob = key < stop ? __expf(score - new_m) : 0.0f;
            l = l * correction + warp_sum(prob);
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[i] *= correction;
            const uint32_t keys = min(32u, stop - base);
            for (uint32_t r = 0; r < keys; r++) {
                const float pr = __shfl_sync(0xffffffffu, prob, r);
                const uint32_t position = base + r;
                const uint32_t block = table[position / p.block_size];
                const T* v_row = v_cache + (((size_t)block * p.num_kv_heads + kv_head) * p.block_size + position % p.block_size) * HD;
                float v[DPL];
                load_dims_vector<T, DPL>(v_row + lane * DPL, v);
#pragma unroll
                for (int i = 0; i < DPL; i++) acc[i] = fmaf(pr, v[i], acc[i]);
            }
            m = new_m;
        }
    }
    if (p.n_splits == 1) {
        T* o = reinterpret_cast<T*>(p.out) + ((size_t)t * p.num_heads + head) * HD + lane * DPL;
#pragma unroll
        for (int i = 0; i < DPL; i++) o[i] = from_float<T>(l > 0.0f ? acc[i] / l : 0.0f);
    } else {
        float* part = p.partial + ((size_t)(split * p.n_tokens + t) * p.num_heads + head) * (HD + 2);
        if (lane == 0) part[0] = m, part[1] = l;
#pragma unroll
        for (int i = 0; i < DPL; i++) part[2 + lane * DPL + i] = acc[i];
    }
}

// Merges the splits of attention_decode. Launch: grid (n_tokens, num_heads), block HD.
template <typename T, int HD>
__device__ void attention_reduce(const AttentionParams& p) {
    const uint32_t t = blockIdx.x, head = blockIdx.y, d = threadIdx.x;
    const size_t stride = (size_t)p.n_tokens * p.num_heads * (HD + 2);
    const float* part = p.partial + ((size_t)t * p.num_heads + head) * (HD + 2);
    float m = -INFINITY;
    for (uint32_t s = 0; s < p.n_splits; s++) m = fmaxf(m, part[s * stride]);
    float l = 0.0f, o = 0.0f;
    if (m != -INFINITY) {
        for (uint32_t s = 0; s < p.n_splits; s++) {
            const float ms = part[s * stride];
            if (ms == -INFINITY) continue;  // an empty split
            const float weight = __expf(ms - m);
            l += part[s * stride + 1] * weight;
            o += part[s * stride + 2 + d] * weight;
        }
    }
    reinterpret_cast<T*>(p.out)[((size_t)t * p.num_heads + head) * HD + d] = from_float<T>(l > 0.0f ? o / l : 0.0f);
}

#define KILN_ATTENTION(HD)                                                                                                  \
    extern "C" __global__ void __launch_bounds__(128) attention_prefill_hd##HD##_f16(const AttentionParams p) { attention_prefill<__half, HD>(p); } \
    extern "C" __global__ void __launch_bounds__(128) attention_prefill_hd##HD##_bf16(const AttentionParams p) { attention_prefill<bf16, HD>(p); } \
    extern "C" __global__ void __launch_bounds__(128, 4) attention_decode_hd##HD##_f16(const AttentionParams p) { attention_decode<__half, HD>(p); } \
    extern "C" __global__ void __launch_bounds__(128, 4) attention_decode_hd##HD##_bf16(const AttentionParams p) { attention_decode<bf16, HD>(p); } \
    extern "C" __global__ void __launch_bounds__(HD) attention_reduce_hd##HD##_f16(const AttentionParams p) { attention_reduce<__half, HD>(p); } \
    extern "C" __global__ void __launch_bounds__(HD) attention_reduce_hd##HD##_bf16(const AttentionParams p) { attention_reduce<bf16, HD>(p); }
KILN_ATTENTION(64)
KILN_ATTENTION(128)
