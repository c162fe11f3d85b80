// Kernel parameter structs shared with Rust (src/backend/cuda/params.rs): every kernel takes one
// of these by value. Pointers are device addresses (u64 in Rust); fields are ordered so that no
// padding is implicit. KILN_LAYOUT / KILN_FIELD pin each size and offset: nvcc checks them here,
// and a Rust test (params.rs) parses these lines and checks them against the Rust structs.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define KILN_LAYOUT(type, size) static_assert(sizeof(type) == size, #type " has the size Rust expects");
#define KILN_FIELD(type, field, offset) static_assert(offsetof(type, field) == offset, #type "." #field " offset");

// Marks a padding token of a captured batch bucket (token_seq) and an unused block-table entry.
#define KILN_NONE 0xFFFFFFFFu
// Most alternatives a sampled row can ask log-probabilities for.
#define KILN_MAX_TOP_LOGPROBS 20

// hidden[t] = table[token_ids[t]] in f32.
typedef struct {
    const void* table;          // [vocab, hidden] T
    const uint32_t* token_ids;  // [n_tokens]
    float* out;                 // [n_tokens, hidden]
    uint32_t n_tokens;
    uint32_t hidden;
} EmbeddingParams;
KILN_LAYOUT(EmbeddingParams, 32)
KILN_FIELD(EmbeddingParams, table, 0)
KILN_FIELD(EmbeddingParams, token_ids, 8)
KILN_FIELD(EmbeddingParams, out, 16)
KILN_FIELD(EmbeddingParams, n_tokens, 24)
KILN_FIELD(EmbeddingParams, hidden, 28)

// residual += delta (when delta is set); out = rmsnorm(residual) * weight. With row_index set,
// output row r normalises residual row row_index[r] (the logits rows) and residual is not written.
typedef struct {
    float* residual;             // [n_tokens, dim] f32, the residual stream
    const float* delta;          // [n_tokens, dim] f32 or null
    const float* weight;         // [dim]
    void* out;                   // [n_rows, dim] T
    const uint32_t* row_index;   // [n_rows] or null
    uint32_t n_rows;
    uint32_t dim;
    float eps;
    uint32_t pad;
} RmsNormParams;
KILN_LAYOUT(RmsNormParams, 56)
KILN_FIELD(RmsNormParams, residual, 0)
KILN_FIELD(RmsNormParams, delta, 8)
KILN_FIELD(RmsNormParams, weight, 16)
KILN_FIELD(RmsNormParams, out, 24)
KILN_FIELD(RmsNormParams, row_index, 32)
KILN_FIELD(RmsNormParams, n_rows, 40)
KILN_FIELD(RmsNormParams, dim, 44)
KILN_FIELD(RmsNormParams, eps, 48)
KILN_FIELD(RmsNormParams, pad, 52)

// out[t, i] = silu(gate_up[t, i]) * gate_up[t, ffn + i].
typedef struct {
    const void* gate_up;  // [n_tokens, 2 * ffn] T (gate then up, one fused projection)
    void* out;            // [n_tokens, ffn] T
    uint32_t n_tokens;
    uint32_t ffn;
} SiluMulParams;
KILN_LAYOUT(SiluMulParams, 24)
KILN_FIELD(SiluMulParams, gate_up, 0)
KILN_FIELD(SiluMulParams, out, 8)
KILN_FIELD(SiluMulParams, n_tokens, 16)
KILN_FIELD(SiluMulParams, ffn, 20)

// Splits the fused QKV projection: rotates q and k (RoPE, rotate-half layout), writes q to q_out
// and k, v into their paged-cache slots. Tokens whose token_seq is KILN_NONE are skipped.
typedef struct {
    const void* qkv;               // [n_tokens, (num_heads + 2 * num_kv_heads) * head_dim] T
    void* q_out;                   // [n_tokens, num_heads * head_dim] T
    void* k_cache;                 // [num_blocks, num_kv_heads, block_size, head_dim] T, this layer
    void* v_cache;                 // same layout
    const float* inv_freq;         // [head_dim / 2], the model's rope scaling applied
    const uint32_t* positions;     // [n_tokens]
    const uint32_t* token_seq;     // [n_tokens]
    const uint32_t* block_tables;  // [n_seqs, max_blocks_per_seq]
    uint32_t n_tokens;
    uint32_t num_heads;
    uint32_t num_kv_heads;
    uint32_t head_dim;
    uint32_t block_size;
    uint32_t max_blocks_per_seq;
} RopeKvParams;
KILN_LAYOUT(RopeKvParams, 88)
KILN_FIELD(RopeKvParams, qkv, 0)
KILN_FIELD(RopeKvParams, q_out, 8)
KILN_FIELD(RopeKvParams, k_cache, 16)
KILN_FIELD(RopeKvParams, v_cache, 24)
KILN_FIELD(RopeKvParams, inv_freq, 32)
KILN_FIELD(RopeKvParams, positions, 40)
KILN_FIELD(RopeKvParams, token_seq, 48)
KILN_FIELD(RopeKvParams, block_tables, 56)
KILN_FIELD(RopeKvParams, n_tokens, 64)
KILN_FIELD(RopeKvParams, num_heads, 68)
KILN_FIELD(RopeKvParams, num_kv_heads, 72)
KILN_FIELD(RopeKvParams, head_dim, 76)
KILN_FIELD(RopeKvParams, block_size, 80)
KILN_FIELD(RopeKvParams, max_blocks_per_seq, 84)

// out[m, n] = sum_k x[m, k] * w[n, k], f32 accumulation; out is T, or f32 when out_f32 is set.
typedef struct {
    const void* x;     // [m, k] T
    const void* w;     // [n, k] T
    void* out;         // [m, n] T or f32
    uint32_t m;
    uint32_t n;
    uint32_t k;        // a multiple of 8 (16-byte rows)
    uint32_t out_f32;
} GemmParams;
KILN_LAYOUT(GemmParams, 40)
KILN_FIELD(GemmParams, x, 0)
KILN_FIELD(GemmParams, w, 8)
KILN_FIELD(GemmParams, out, 16)
KILN_FIELD(GemmParams, m, 24)
KILN_FIELD(GemmParams, n, 28)
KILN_FIELD(GemmParams, k, 32)
KILN_FIELD(GemmParams, out_f32, 36)

// Causal grouped-query attention over the paged cache; the prefill kernel, the split decode
// kernel and the reduction of its splits share it.
typedef struct {
    const void* q;                    // [n_tokens, num_heads, head_dim] T, roped
    const void* k_cache;              // [num_blocks, num_kv_heads, block_size, head_dim] T
    const void* v_cache;
    void* out;                        // [n_tokens, num_heads * head_dim] T
    float* partial;                   // [n_splits, n_tokens, num_heads, head_dim + 2] f32 (decode)
    const uint32_t* positions;        // [n_tokens]
    const uint32_t* token_seq;        // [n_tokens], KILN_NONE for padding
    const uint32_t* block_tables;     // [n_seqs, max_blocks_per_seq]
    const uint32_t* seq_token_start;  // [n_seqs] (prefill)
    const uint32_t* seq_token_count;  // [n_seqs] (prefill)
    const uint32_t* unused;
    uint32_t n_tokens;
    uint32_t num_heads;
    uint32_t num_kv_heads;
    uint32_t head_dim;
    uint32_t block_size;
    uint32_t max_blocks_per_seq;
    uint32_t n_splits;
    uint32_t sliding_window;  // 0: full causal attention
    float scale;              // 1 / sqrt(head_dim)
    uint32_t pad;
} AttentionParams;
KILN_LAYOUT(AttentionParams, 128)
KILN_FIELD(AttentionParams, q, 0)
KILN_FIELD(AttentionParams, k_cache, 8)
KILN_FIELD(AttentionParams, v_cache, 16)
KILN_FIELD(AttentionParams, out, 24)
KILN_FIELD(AttentionParams, partial, 32)
KILN_FIELD(AttentionParams, positions, 40)
KILN_FIELD(AttentionParams, token_seq, 48)
KILN_FIELD(AttentionParams, block_tables, 56)
KILN_FIELD(AttentionParams, seq_token_start, 64)
KILN_FIELD(AttentionParams, seq_token_count, 72)
KILN_FIELD(AttentionParams, unused, 80)
KILN_FIELD(AttentionParams, n_tokens, 88)
KILN_FIELD(AttentionParams, num_heads, 92)
KILN_FIELD(AttentionParams, num_kv_heads, 96)
KILN_FIELD(AttentionParams, head_dim, 100)
KILN_FIELD(AttentionParams, block_size, 104)
KILN_FIELD(AttentionParams, max_blocks_per_seq, 108)
KILN_FIELD(AttentionParams, n_splits, 112)
KILN_FIELD(AttentionParams, sliding_window, 116)
KILN_FIELD(AttentionParams, scale, 120)
KILN_FIELD(AttentionParams, pad, 124)

// The sampling settings of one logits row (engine/sampler.rs's SamplingParams, flattened).
typedef struct {
    double uniform;               // the row's draw in [0, 1), from the sequence's seeded Rng
    float temperature;            // 0: greedy
    float top_p;                  // 1: off
    float min_p;                  // 0: off
    float repetition_penalty;     // 1: off
    float presence_penalty;       // 0: off
    float frequency_penalty;      // 0: off
    uint32_t top_k;               // 0: off
    uint32_t penalty_start;       // first PenaltyEntry of this row (its biased and penalised tokens)
    uint32_t penalty_count;
    uint32_t mask_row;            // row of the allowed-token bitmask, KILN_NONE: no mask
    uint32_t top_logprobs;        // alternatives wanted, at most KILN_MAX_TOP_LOGPROBS
    uint32_t want_logprobs;       // 1: write the chosen token's log-probability
} SampleRow;
KILN_LAYOUT(SampleRow, 56)
KILN_FIELD(SampleRow, uniform, 0)
KILN_FIELD(SampleRow, temperature, 8)
KILN_FIELD(SampleRow, top_p, 12)
KILN_FIELD(SampleRow, min_p, 16)
KILN_FIELD(SampleRow, repetition_penalty, 20)
KILN_FIELD(SampleRow, presence_penalty, 24)
KILN_FIELD(SampleRow, frequency_penalty, 28)
KILN_FIELD(SampleRow, top_k, 32)
KILN_FIELD(SampleRow, penalty_start, 36)
KILN_FIELD(SampleRow, penalty_count, 40)
KILN_FIELD(SampleRow, mask_row, 44)
KILN_FIELD(SampleRow, top_logprobs, 48)
KILN_FIELD(SampleRow, want_logprobs, 52)

// One distinct token whose logit a row adjusts: its logit bias (added first), how often it was
// generated, and whether the repetition penalty applies (seen in prompt or output).
typedef struct {
    uint32_t token;
    uint32_t generated_count;
    uint32_t seen;
    float bias;       // 0: none
    float raw_logit;  // written by the kernel: the logit before bias and penalties (for log-probabilities)
} PenaltyEntry;
KILN_LAYOUT(PenaltyEntry, 20)
KILN_FIELD(PenaltyEntry, token, 0)
KILN_FIELD(PenaltyEntry, generated_count, 4)
KILN_FIELD(PenaltyEntry, seen, 8)
KILN_FIELD(PenaltyEntry, bias, 12)
KILN_FIELD(PenaltyEntry, raw_logit, 16)

typedef struct {
    uint32_t token;
    float logprob;
} TopLogprob;
KILN_LAYOUT(TopLogprob, 8)
KILN_FIELD(TopLogprob, token, 0)
KILN_FIELD(TopLogprob, logprob, 4)

typedef struct {
    float* logits;                // [n_rows, vocab] f32, modified in place (penalties, mask)
    const SampleRow* rows;        // [n_rows]
    PenaltyEntry* penalties;      // [total entries]
    const uint32_t* mask;         // [mask rows, ceil(vocab / 32)] bit set: token allowed
    uint32_t* tokens_out;         // [n_rows]
    float* logprobs_out;          // [n_rows] the chosen token's log-probability
    TopLogprob* top_out;          // [n_rows, KILN_MAX_TOP_LOGPROBS]
    double* weights;              // [n_rows, vocab] scratch: each candidate's unnormalised probability
    uint32_t n_rows;
    uint32_t vocab;
} SampleParams;
KILN_LAYOUT(SampleParams, 72)
KILN_FIELD(SampleParams, logits, 0)
KILN_FIELD(SampleParams, rows, 8)
KILN_FIELD(SampleParams, penalties, 16)
KILN_FIELD(SampleParams, mask, 24)
KILN_FIELD(SampleParams, tokens_out, 32)
KILN_FIELD(SampleParams, logprobs_out, 40)
KILN_FIELD(SampleParams, top_out, 48)
KILN_FIELD(SampleParams, weights, 56)
KILN_FIELD(SampleParams, n_rows, 64)
KILN_FIELD(SampleParams, vocab, 68)

// out[i] = uniform(-scale, scale) from a counter-based hash of (seed, i): device-side random
// weights for benchmarks of real geometries.
typedef struct {
    void* out;      // [n] T
    uint64_t n;
    uint64_t seed;
    float scale;
    float offset;   // added after scaling (norm weights near 1)
} FillRandomParams;
KILN_LAYOUT(FillRandomParams, 32)
KILN_FIELD(FillRandomParams, out, 0)
KILN_FIELD(FillRandomParams, n, 8)
KILN_FIELD(FillRandomParams, seed, 16)
KILN_FIELD(FillRandomParams, scale, 24)
KILN_FIELD(FillRandomParams, offset, 28)
