"""Plain numpy Llama forward pass over a GGUF file: the independent reference kiln's CPU path is checked against.

Written from the model's definition, not from kiln's code. Weights are dequantized with the `gguf`
package; matmuls run in float32, RMSNorm statistics and softmax in float64 (cheap, removes one source
of doubt). Usage as a script: greedy generation for one prompt, given as token ids.
"""

import argparse
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


class LlamaConfig:
    """The hyper-parameters the forward pass needs, read from the GGUF metadata."""

    def __init__(self, reader: GGUFReader):
        def field(key):
            return reader.fields[key].contents()

        arch = field("general.architecture")
        assert arch == "llama", f"only the llama architecture is supported, got {arch}"
        self.n_layers = int(field("llama.block_count"))
        self.dim = int(field("llama.embedding_length"))
        self.ffn_dim = int(field("llama.feed_forward_length"))
        self.n_heads = int(field("llama.attention.head_count"))
        self.n_kv_heads = int(field("llama.attention.head_count_kv"))
        self.head_dim = self.dim // self.n_heads
        self.rope_theta = float(field("llama.rope.freq_base"))
        self.rms_eps = float(field("llama.attention.layer_norm_rms_epsilon"))
        self.vocab_size = len(reader.fields["tokenizer.ggml.tokens"].data)


def load_weights(gguf_path: str, weight_dtype: str = "f32", rope: str = "interleaved"):
    """Returns (config, weights dict name -> float32 array shaped [out, in] like a torch Linear).

    weight_dtype "f16": every dequantized matrix value is rounded to float16 and widened back to
    float32, which is what kiln does when it converts Q4_1/Q8_0 to f16. Norm weights (F32 in the
    file) stay float32 either way.
    rope "rotate-half": undo llama.cpp's row permutation of Q/K so rotate-half RoPE applies (the
    Hugging Face layout); "interleaved": keep the rows as stored and rotate adjacent pairs.
    """
    reader = GGUFReader(gguf_path)
    config = LlamaConfig(reader)
    weights = {}
    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        # GGUF lists shapes fastest-dimension first; numpy arrays come out [rows, cols] = [out, in].
        values = values.reshape([int(n) for n in reversed(tensor.shape)])
        if values.ndim == 2 and weight_dtype == "f16":
            values = values.astype(np.float16).astype(np.float32)
        if rope == "rotate-half" and tensor.name.endswith(("attn_q.weight", "attn_k.weight")):
            n_heads = config.n_heads if tensor.name.endswith("attn_q.weight") else config.n_kv_heads
            values = unpermute_qk(values, n_heads)
        weights[tensor.name] = np.ascontiguousarray(values)
    return config, weights


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf's permute: GGUF row h*d + 2*i + j came from HF row h*d + j*d/2 + i."""
    rows, cols = w.shape
    head_dim = rows // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    # x: [n_tokens, dim]
    x64 = x.astype(np.float64)
    scale = 1.0 / np.sqrt(np.mean(x64 * x64, axis=-1, keepdims=True) + eps)
    return (x64 * scale).astype(np.float32) * weight


def rope_angles(positions: np.ndarray, head_dim: int, theta: float):
    """cos/sin shaped [n_tokens, head_dim/2]; frequency i is theta^(-2i/head_dim)."""
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = positions.astype(np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, mode: str) -> np.ndarray:
    # x: [n_tokens, n_heads, head_dim]; cos/sin: [n_tokens, head_dim/2]
    c, s = cos[:, None, :], sin[:, None, :]
    out = np.empty_like(x)
    if mode == "interleaved":  # GPT-J style: pairs (2i, 2i+1)
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * c - b * s
        out[..., 1::2] = a * s + b * c
    else:  # rotate-half (NeoX / Hugging Face): pairs (i, i + head_dim/2)
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]
        out[..., :half] = a * c - b * s
        out[..., half:] = a * s + b * c
    return out


class LlamaModel:
    def __init__(self, gguf_path: str, weight_dtype: str = "f32", rope: str = "interleaved", kv_dtype: str = "f32"):
        self.config, self.w = load_weights(gguf_path, weight_dtype, rope)
        self.rope = rope
        # "f16": keys and values are rounded to f16 as they enter the cache (kiln's CPU cache and
        # llama.cpp's default), everything else stays f32.
        self.kv_dtype = kv_dtype
        self.reset()

    def reset(self):
        cfg = self.config
        # Per layer: keys/values after RoPE, [n_past, n_kv_heads, head_dim].
        empty = np.zeros((0, cfg.n_kv_heads, cfg.head_dim), dtype=np.float32)
        self.k_cache = [empty] * cfg.n_layers
        self.v_cache = [empty] * cfg.n_layers
        self.n_past = 0

    def forward(self, token_ids) -> np.ndarray:
        """Appends token_ids to the sequence; returns logits [len(token_ids), vocab] as float32."""
        cfg, w = self.config, self.w
        n_new = len(token_ids)
        positions = np.arange(self.n_past, self.n_past + n_new)
        cos, sin = rope_angles(positions, cfg.head_dim, cfg.rope_theta)
        group = cfg.n_heads // cfg.n_kv_heads

        h = w["token_embd.weight"][np.asarray(token_ids)]  # [n_new, dim]
        for layer in range(cfg.n_layers):
            p = f"blk.{layer}."
            x = rms_norm(h, w[p + "attn_norm.weight"], cfg.rms_eps)
            q = (x @ w[p + "attn_q.weight"].T).reshape(n_new, cfg.n_heads, cfg.head_dim)
            k = (x @ w[p + "attn_k.weight"].T).reshape(n_new, cfg.n_kv_heads, cfg.head_dim)
            v = (x @ w[p + "attn_v.weight"].T).reshape(n_new, cfg.n_kv_heads, cfg.head_dim)
            q = apply_rope(q, cos, sin, self.rope)
            k = apply_rope(k, cos, sin, self.rope)
            if self.kv_dtype == "f16":
                k = k.astype(np.float16).astype(np.float32)
                v = v.astype(np.float16).astype(np.float32)
            keys = np.concatenate([self.k_cache[layer], k])  # [n_total, n_kv_heads, head_dim]
            values = np.concatenate([self.v_cache[layer], v])
            self.k_cache[layer], self.v_cache[layer] = keys, values
            n_total = keys.shape[0]

            # Query head j reads KV head j // group (grouped-query attention).
            keys_per_q = np.repeat(keys, group, axis=1).transpose(1, 2, 0)  # [n_heads, head_dim, n_total]
            values_per_q = np.repeat(values, group, axis=1).transpose(1, 0, 2)  # [n_heads, n_total, head_dim]
            scores = (q.transpose(1, 0, 2) @ keys_per_q).astype(np.float64) / np.sqrt(cfg.head_dim)
            # Causal mask: new token i sits at absolute position n_past + i and sees keys 0..=that.
            visible = np.arange(n_total)[None, :] <= positions[:, None]  # [n_new, n_total]
            scores = np.where(visible[None], scores, -np.inf)
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            attn = (probs.astype(np.float32) @ values_per_q).transpose(1, 0, 2).reshape(n_new, cfg.dim)
            h = h + attn @ w[p + "attn_output.weight"].T

            x = rms_norm(h, w[p + "ffn_norm.weight"], cfg.rms_eps)
            gate = x @ w[p + "ffn_gate.weight"].T
            up = x @ w[p + "ffn_up.weight"].T
            silu = gate / (1.0 + np.exp(-gate.astype(np.float64))).astype(np.float32)
            h = h + (silu * up) @ w[p + "ffn_down.weight"].T

        self.n_past += n_new
        h = rms_norm(h, w["output_norm.weight"], cfg.rms_eps)
        # Tied embeddings: this GGUF has no output.weight, the LM head is the token embedding.
        lm_head = w.get("output.weight", w["token_embd.weight"])
        return h @ lm_head.T


def top2_margin(logits: np.ndarray) -> float:
    top = np.partition(logits, -2)[-2:]
    return float(top[1] - top[0])


def first_step_logits(model: LlamaModel, prompt_ids, ids):
    """The logits of `ids` at the first generated position after `prompt_ids`, rounded as the
    golden file stores them."""
    model.reset()
    logits = model.forward(list(prompt_ids))[-1]
    return [[int(i), round(float(logits[i]), 5)] for i in ids]


def greedy_generate(model: LlamaModel, prompt_ids, max_new_tokens: int, stop_ids=(0, 2)):
    """Returns (generated ids, per-step margins, per-step logits). The stop token is included."""
    model.reset()
    logits = model.forward(list(prompt_ids))[-1]
    generated, margins, step_logits = [], [], []
    for _ in range(max_new_tokens):
        next_id = int(np.argmax(logits))
        generated.append(next_id)
        margins.append(top2_margin(logits))
        step_logits.append(logits)
        if next_id in stop_ids:
            break
        logits = model.forward([next_id])[-1]
    return generated, margins, step_logits


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("gguf_path")
    parser.add_argument("prompt_ids", help="comma-separated token ids")
    parser.add_argument("--weights", choices=["f32", "f16"], default="f32")
    parser.add_argument("--rope", choices=["interleaved", "rotate-half"], default="interleaved")
    parser.add_argument("--kv", choices=["f32", "f16"], default="f32", help="KV cache precision")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args(argv)
    model = LlamaModel(args.gguf_path, args.weights, args.rope, args.kv)
    prompt_ids = [int(t) for t in args.prompt_ids.split(",")]
    generated, margins, _ = greedy_generate(model, prompt_ids, args.max_new_tokens)
    for token_id, margin in zip(generated, margins):
        print(f"{token_id}\t{margin:.3f}")


if __name__ == "__main__":
    sys.exit(main())
