// Token choice on the GPU, one block per logits row, with engine/sampler.rs's semantics:
// log-probabilities of the raw logits (chosen token and the best alternatives), then the logit
// bias and the repetition / presence / frequency penalties, the allowed-token mask, and either
// argmax (lowest id wins ties) or a seeded draw after temperature, top-k, min-p and top-p.
//
// The CPU sorts candidates by (logit desc, id asc) and walks them. Here each candidate gets that
// order as a 64-bit key (ordered float bits, then the inverted id), and every cut is a radix
// search over the keys: eight 8-bit passes that histogram counts (top-k) or probability mass
// (top-p, the draw) and narrow to the one key where the running total crosses its target. No
// sort, no per-token host work. Histogram sums are f64 atomics: their order varies, so a draw
// that lands within rounding of a boundary may pick the neighbour the CPU would not.
// Latency-bound on a few sweeps over the vocabulary (L2-resident). Launch: grid (n_rows),
// block 1024.
#include "common.cuh"
#include "ptx.cuh"

namespace {
constexpr int THREADS = 1024;
constexpr uint64_t NOT_FOUND = 0;  // no candidate has key 0: it would be a NaN logit at id 2^32-1

__device__ __forceinline__ uint64_t sort_key(float logit, uint32_t id) {
    const uint32_t bits = __float_as_uint(logit);
    const uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
    return ((uint64_t)ordered << 32) | (0xFFFFFFFFu - id);
}
__device__ __forceinline__ uint32_t key_token(uint64_t key) { return 0xFFFFFFFFu - (uint32_t)(key & 0xFFFFFFFFu); }

struct MaxOp {
    template <typename V> __device__ V operator()(V a, V b) const { return a > b ? a : b; }
};
struct MinOp {
    template <typename V> __device__ V operator()(V a, V b) const { return a < b ? a : b; }
};
struct SumOp {
    template <typename V> __device__ V operator()(V a, V b) const { return a + b; }
};

// Reduction over the block; every thread gets the result. `scratch` holds 32 values of V.
template <typename V, typename Op>
__device__ V block_reduce(V v, V* scratch, Op op) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = scratch[lane];  // THREADS / 32 == 32 partials
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

struct Shared {
    double hist[256];
    double sums[32];
    uint64_t keys[32];
    float floats[32];
    uint64_t prefix;
    double above;
    int found;
    float chosen_raw;
};

// The key of the candidate, in descending key order, at which the running total of `weight`
// first reaches `target` (strict: exceeds it); NOT_FOUND when the total never does.
// `weight(i)` is 0 for tokens that are not candidates.
template <typename Weight, typename Key>
__device__ uint64_t radix_search(uint32_t vocab, double target, bool strict, Weight weight, Key key_of, Shared& sh) {
    uint64_t prefix = 0, prefix_mask = 0;
    double above = 0.0;
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += THREADS) sh.hist[b] = 0.0;
        __syncthreads();
        for (uint32_t i = threadIdx.x; i < vocab; i += THREADS) {
            const double w = weight(i);
            if (w <= 0.0) continue;
            const uint64_t key = key_of(i);
            if ((key & prefix_mask) == prefix) atomicAdd(&sh.hist[(key >> shift) & 255], w);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int chosen = -1;
            double running = above;
            for (int b = 255; b >= 0; b--) {
                const double next = running + sh.hist[b];
                if (sh.hist[b] > 0.0 && (strict ? next > target : next >= target)) {
                    chosen = b;
                    break;
                }
                running = next;
            }
            sh.found = chosen >= 0;
            sh.above = running;
            sh.prefix = prefix | ((uint64_t)(chosen < 0 ? 0 : chosen) << shift);
        }
        __syncthreads();
        if (!sh.found) return NOT_FOUND;
        prefix = sh.prefix, above = sh.above;
        prefix_mask |= (uint64_t)255 << shift;
    }
    return prefix;
}
}  // namespace

extern "C" __global__ void __launch_bounds__(THREADS, 1) sample_f32(const SampleParams p) {
    KILN_SHARED(Shared, sh, );
    const uint32_t row = blockIdx.x, vocab = p.vocab;
    if (row >= p.n_rows) return;
    const SampleRow r = p.rows[row];
    float* logits = p.logits + (size_t)row * vocab;
    double* weights = p.weights + (size_t)row * vocab;
    const bool logprobs_wanted = r.want_logprobs || r.top_logprobs > 0;

    // 1. Log-probabilities are the model's own: log_softmax of the raw logits (ops/logits.rs).
    float raw_max = -INFINITY, log_total = 0.0f;
    if (logprobs_wanted) {
        float local = -INFINITY;
        for (uint32_t i = threadIdx.x; i < vocab; i += THREADS) local = fmaxf(local, logits[i]);
        raw_max = block_reduce(local, sh.floats, MaxOp());
        double total = 0.0;
        for (uint32_t i = threadIdx.x; i < vocab; i += THREADS) total += exp((double)(logits[i] - raw_max));
        log_total = (float)log(block_reduce(total, sh.sums, SumOp()));
        // Alternatives ranked as the CPU ranks them: by the rounded log-probability, then by id
        // (two logits one ulp apart can share a log-probability).
        auto logprob = [&](uint32_t i) { return __fsub_rn(__fsub_rn(logits[i], raw_max), log_total); };
        uint64_t previous = ~(uint64_t)0;
        const uint32_t top = min(r.top_logprobs, (uint32_t)KILN_MAX_TOP_LOGPROBS);
        for (uint32_t n = 0; n < top && n < vocab; n++) {
            uint64_t best = 0;
            for (uint32_t i = threadIdx.x; i < vocab; i += THREADS) {
                const uint64_t key = sort_key(logprob(i), i);
                if (key < previous && key > best) best = key;
            }
            best = block_reduce(best, sh.keys, MaxOp());
            const uint32_t token = key_token(best);
            if (threadIdx.x == 0) p.top_out[(size_t)row * KILN_MAX_TOP_LOGPROBS + n] = TopLogprob{token, logprob(token)};
            previous = best;
        }
        // Thread 0 read the last alternative's raw logit above: no thread may penalise it in place
        // (step 2) before that read.
        __syncthreads();
    }

    // 2. Logit bias, then penalties, each distinct token once (one thread per entry, so no two
    // threads write one logit); the raw logit is kept for step 5. A zero bias is not added, as on
    // the CPU: -0.0 + 0 is +0.0, which orders above -0.0 in the sort keys.
    for (uint32_t e = threadIdx.x; e < r.penalty_count; e += THREADS) {
        PenaltyEntry& entry = p.penalties[r.penalty_start + e];
        float l = logits[entry.token];
        entry.raw_logit = l;
        if (entry.bias != 0.0f) l = __fadd_rn(l, entry.bias);
        if (r.repetition_penalty != 1.0f && entry.seen) {
            l = l > 0.0f ? __fdiv_rn(l, r.repetition_penalty) : __fmul_rn(l, r.repetition_penalty);
        }
        if ((r.presence_penalty != 0.0f || r.frequency_penalty != 0.0f) && entry.generated_count > 0) {
            l = __fsub_rn(l, __fadd_rn(r.presence_penalty, __fmul_rn(r.frequency_penalty, (float)entry.generated_count)));
        }
        logits[entry.token] = l;
    }
    __syncthreads();
    if (r.mask_row != KILN_NONE) {
        const uint32_t* mask = p.mask + (size_t)r.mask_row * ((vocab + 31) / 32);
        for (uint32_t i = threadIdx.x; i < vocab; i += THREADS) {
            if (!((mask[i / 32] >> (i % 32)) & 1u)) logits[i] = -INFINITY;
        }
    }
    __syncthreads();

    // 3. Greedy: the largest key is the largest logit with the lowest id.
    uint64_t best = 0;
    uint32_t candidates = 0;
    for (uint32_t i = threadIdx.x; i < vocab; i += THREADS) {
        const float l = logits[i];
        const uint64_t key = sort_key(l != l ? -INFINITY : l, i);
        best = key > best ? key : best;
        candidates += isfinite(l) ? 1u : 0u;
    }
    best = block_reduce(best, sh.keys, MaxOp());
    candidates = block_reduce(candidates, reinterpret_cast<uint32_t*>(sh.floats), SumOp());
    uint32_t token = key_token(best);

    // 4. A seeded draw: scaled logits s = l / T over the finite logits, in the CPU's key order.
    const bool greedy = r.temperature == 0.0f || r.top_k == 1;
    if (!greedy && candidates > 0) {
        const float inverse_temperature = __fdiv_rn(1.0f, r.temperature);
        auto scaled = [&](uint32_t i) { return __fmul_rn(logits[i], inverse_temperature); };
        auto key_of = [&](uint32_t i) { return sort_key(scaled(i), i); };
        uint64_t top_key = 0;
        for (uint32_t i = threadIdx.x; i < vocab; i += THREADS) {
            if (isfinite(logits[i])) top_key = max(top_key, key_of(i));
        }
        top_key = block_reduce(top_key, sh.keys, MaxOp());
        const float max_scaled = scaled(key_token(top_key));
        // Top-k: the k-th largest key among the candidates.
        uint64_t k_key = 0;
        if (r.top_k > 0 && r.top_k < candidates) {
            k_key = radix_search(vocab, (double)r.top_k, false, [&](uint32_t i) { return isfinite(logits[i]) ? 1.0 : 0.0; }, key_of, sh);
        }
        // Weights relative to the best candidate, in f64 as on the CPU.
        double total = 0.0;
        for (uint32_t i = threadIdx.x; i < vocab; i += THREADS) {
            double w = 0.0;
            if (isfinite(logits[i]) && key_of(i) >= k_key) w = exp((double)__fsub_rn(scaled(i), max_scaled));
            weights[i] = w;
            total += w;
        }
        total = block_reduce(total, sh.sums, SumOp());
        __syncthreads();
        if (r.min_p > 0.0f) {
            // Sorted weights fall monotonically, so the CPU's take_while is this filter; the best
            // candidate always stays.
            for (uint32_t i = threadIdx.x; i < vocab; i += THREADS) {
                if (weights[i] > 0.0 && !(weights[i] >= (double)r.min_p) && key_of(i) != top_key) weights[i] = 0.0;
            }
            __syncthreads();
        }
        auto weight = [&](uint32_t i) { return weights[i]; };
        if (r.top_p < 1.0f) {
            const uint64_t p_key = radix_search(vocab, (double)r.top_p * total, false, weight, key_of, sh);
            if (p_key != NOT_FOUND) {
                for (uint32_t i = threadIdx.x; i < vocab; i += THREADS) {
                    if (weights[i] > 0.0 && key_of(i) < p_key) weights[i] = 0.0;
                }
                __syncthreads();
            }
        }
        double kept_total = 0.0;
        uint64_t last_key = ~(uint64_t)0;
        for (uint32_t i = threadIdx.x; i < vocab; i += THREADS) {
            if (weights[i] > 0.0) {
                kept_total += weights[i];
                last_key = min(last_key, key_of(i));
            }
        }
        kept_total = block_reduce(kept_total, sh.sums, SumOp());
        last_key = block_reduce(last_key, sh.keys, MinOp());
        const uint64_t drawn = radix_search(vocab, r.uniform * kept_total, true, weight, key_of, sh);
        token = key_token(drawn != NOT_FOUND ? drawn : last_key);
    }

    // 5. The chosen token's log-probability, from its logit before bias and penalties.
    if (r.want_logprobs) {
        if (threadIdx.x == 0) sh.chosen_raw = logits[token];
        __syncthreads();
        for (uint32_t e = threadIdx.x; e < r.penalty_count; e += THREADS) {
            if (p.penalties[r.penalty_start + e].token == token) sh.chosen_raw = p.penalties[r.penalty_start + e].raw_logit;
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        p.tokens_out[row] = token;
        if (r.want_logprobs) p.logprobs_out[row] = (sh.chosen_raw - raw_max) - log_total;
    }
}
