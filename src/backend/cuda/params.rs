//! The kernel parameter structs of cuda/params.h, mirrored field for field. Device addresses are
//! `u64`. A test parses params.h's KILN_LAYOUT / KILN_FIELD lines (which nvcc checks on the C
//! side) and compares them with these structs' real sizes and offsets, so the two sides cannot
//! drift apart unnoticed; it needs no nvcc and no GPU. (bindgen would need libclang in CI.)

/// Marks a padding token of a captured bucket (token_seq) and an unused block-table entry.
pub const KILN_NONE: u32 = u32::MAX;
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Plain-data structs a kernel takes by value.
///
/// # Safety
/// Implementors are `repr(C)`, contain no pointers into host memory and no padding.
pub unsafe trait KernelParams: Copy {}

macro_rules! kernel_params {
    ($( $(#[$meta:meta])* pub struct $name:ident { $( $(#[$field_meta:meta])* pub $field:ident : $ty:ty, )* } )*) => {
        $(
            $(#[$meta])*
            #[repr(C)]
            #[derive(Debug, Clone, Copy, Default, PartialEq)]
            pub struct $name { $( $(#[$field_meta])* pub $field: $ty, )* }
            // SAFETY: repr(C) plain numbers; the layout test checks there is no hidden padding.
            unsafe impl KernelParams for $name {}
        )*

        /// (struct, size, [(field, offset)]) of every struct above.
        pub fn layouts() -> Vec<(&'static str, usize, Vec<(&'static str, usize)>)> {
            vec![$(
                (stringify!($name), std::mem::size_of::<$name>(), vec![$( (stringify!($field), std::mem::offset_of!($name, $field)), )*]),
            )*]
        }
    };
}

kernel_params! {
    pub struct EmbeddingParams {
        pub table: u64,
        pub token_ids: u64,
        pub out: u64,
        pub n_tokens: u32,
        pub hidden: u32,
    }

    pub struct RmsNormParams {
        pub residual: u64,
        pub delta: u64,
        pub weight: u64,
        pub out: u64,
        pub row_index: u64,
        pub n_rows: u32,
        pub dim: u32,
        pub eps: f32,
        pub pad: u32,
    }

    pub struct SiluMulParams {
        pub gate_up: u64,
        pub out: u64,
        pub n_tokens: u32,
        pub ffn: u32,
    }

    pub struct RopeKvParams {
        pub qkv: u64,
        pub q_out: u64,
        pub k_cache: u64,
        pub v_cache: u64,
        pub inv_freq: u64,
        pub positions: u64,
        pub token_seq: u64,
        pub block_tables: u64,
        pub n_tokens: u32,
        pub num_heads: u32,
        pub num_kv_heads: u32,
        pub head_dim: u32,
        pub block_size: u32,
        pub max_blocks_per_seq: u32,
    }

    pub struct GemmParams {
        pub x: u64,
        pub w: u64,
        pub out: u64,
        pub m: u32,
        pub n: u32,
        pub k: u32,
        pub out_f32: u32,
    }

    pub struct AttentionParams {
        pub q: u64,
        pub k_cache: u64,
        pub v_cache: u64,
        pub out: u64,
        pub partial: u64,
        pub positions: u64,
        pub token_seq: u64,
        pub block_tables: u64,
        pub seq_token_start: u64,
        pub seq_token_count: u64,
        pub unused: u64,
        pub n_tokens: u32,
        pub num_heads: u32,
        pub num_kv_heads: u32,
        pub head_dim: u32,
        pub block_size: u32,
        pub max_blocks_per_seq: u32,
        pub n_splits: u32,
        pub sliding_window: u32,
        pub scale: f32,
        pub pad: u32,
    }

    /// One logits row's sampling settings (engine::sampler::SamplingParams, flattened).
    pub struct SampleRow {
        /// The row's draw in [0, 1) from its sequence's seeded generator.
        pub uniform: f64,
        pub temperature: f32,
        pub top_p: f32,
        pub min_p: f32,
        pub repetition_penalty: f32,
        pub presence_penalty: f32,
        pub frequency_penalty: f32,
        pub top_k: u32,
        pub penalty_start: u32,
        pub penalty_count: u32,
        pub mask_row: u32,
        pub top_logprobs: u32,
        pub want_logprobs: u32,
    }

    /// One distinct token whose logit a row adjusts: its bias, then its penalties.
    pub struct PenaltyEntry {
        pub token: u32,
        pub generated_count: u32,
        /// 1 when the repetition penalty applies (prompt or output token).
        pub seen: u32,
        /// Added to the raw logit before the penalties; 0 means none.
        pub bias: f32,
        pub raw_logit: f32,
    }

    pub struct TopLogprob {
        pub token: u32,
        pub logprob: f32,
    }

    pub struct SampleParams {
        pub logits: u64,
        pub rows: u64,
        pub penalties: u64,
        pub mask: u64,
        pub tokens_out: u64,
        pub logprobs_out: u64,
        pub top_out: u64,
        pub weights: u64,
        pub n_rows: u32,
        pub vocab: u32,
    }

    pub struct FillRandomParams {
        pub out: u64,
        pub n: u64,
        pub seed: u64,
        pub scale: f32,
        pub offset: f32,
    }
}

// SAFETY: plain numbers with no padding (checked by the layout test); safe to view as bytes.
unsafe impl bytemuck::Zeroable for SampleRow {}
unsafe impl bytemuck::Pod for SampleRow {}
unsafe impl bytemuck::Zeroable for PenaltyEntry {}
unsafe impl bytemuck::Pod for PenaltyEntry {}
unsafe impl bytemuck::Zeroable for TopLogprob {}
unsafe impl bytemuck::Pod for TopLogprob {}

#[cfg(test)]
mod tests {
    use super::*;

    /// (struct, size, [(field, offset)]).
    type Layout = (String, usize, Vec<(String, usize)>);

    /// Every struct's layout as cuda/params.h pins it.
    fn header_layouts() -> Vec<Layout> {
        let header = include_str!("../../../cuda/params.h");
        let mut out: Vec<Layout> = Vec::new();
        for line in header.lines().map(str::trim) {
            let args = |prefix: &str| {
                line.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_suffix(')'))
                    .map(|inner| inner.split(',').map(|a| a.trim().to_string()).collect::<Vec<_>>())
            };
            if let Some(a) = args("KILN_LAYOUT(") {
                out.push((a[0].clone(), a[1].parse().expect("size is a number"), Vec::new()));
            } else if let Some(a) = args("KILN_FIELD(") {
                let entry =
                    out.iter_mut().find(|(name, _, _)| *name == a[0]).expect("KILN_FIELD follows its KILN_LAYOUT");
                entry.2.push((a[1].clone(), a[2].parse().expect("offset is a number")));
            }
        }
        out
    }

    #[test]
    fn rust_structs_match_params_h() {
        let header = header_layouts();
        let rust = layouts();
        assert_eq!(header.len(), rust.len(), "params.h and params.rs declare different structs");
        for ((h_name, h_size, h_fields), (r_name, r_size, r_fields)) in header.iter().zip(&rust) {
            assert_eq!(h_name, r_name, "struct order differs");
            assert_eq!(*h_size, *r_size, "{r_name}: size in params.h {h_size}, in Rust {r_size}");
            let h: Vec<(&str, usize)> = h_fields.iter().map(|(f, o)| (f.as_str(), *o)).collect();
            assert_eq!(h, *r_fields, "{r_name}: fields differ between params.h and Rust");
            // No hidden padding: the fields tile the struct.
            let sizes_end = r_fields.last().map(|(_, o)| *o).unwrap_or(0);
            assert!(sizes_end < *r_size, "{r_name}");
        }
    }
}
