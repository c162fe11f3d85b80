//! The Llama weights as typed views over the model files: float matrices stay in their stored
//! dtype (f32, f16 or bf16, memory-mapped); GGUF block quantizations are kept quantized, regrouped
//! into kiln's layout of groups of 16 rows (`packed_groups`); norms are copied to f32 since they
//! are tiny.

use std::path::Path;
use std::sync::Arc;

use half::{bf16, f16};

use super::packed_groups::{self, GROUP_ROWS};
use super::packed_quant::{self, PackedQuant};
use super::quant::GgmlType;
use super::safetensors_dir::{SafetensorsDir, SharedBytes, WeightBytes, WeightDtype};
use super::{ModelConfig, ModelError};

/// How a matrix's elements are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum WeightFormat {
    F32,
    F16,
    Bf16,
    /// Block quantizations in kiln's group layout (`packed_groups`).
    Packed(PackedQuant),
}

impl WeightFormat {
    /// The float element type, for formats that are plain floats.
    pub fn float_dtype(self) -> Option<WeightDtype> {
        match self {
            WeightFormat::F32 => Some(WeightDtype::F32),
            WeightFormat::F16 => Some(WeightDtype::F16),
            WeightFormat::Bf16 => Some(WeightDtype::Bf16),
            WeightFormat::Packed(_) => None,
        }
    }

    pub fn from_dtype(dtype: WeightDtype) -> WeightFormat {
        match dtype {
            WeightDtype::F32 => WeightFormat::F32,
            WeightDtype::F16 => WeightFormat::F16,
            WeightDtype::Bf16 => WeightFormat::Bf16,
        }
    }

    /// The format a GGUF tensor of `ggml_type` is kept in, if kiln computes on it.
    pub fn from_ggml(ggml_type: GgmlType) -> Option<WeightFormat> {
        Some(match ggml_type {
            GgmlType::F32 => WeightFormat::F32,
            GgmlType::F16 => WeightFormat::F16,
            GgmlType::BF16 => WeightFormat::Bf16,
            other => WeightFormat::Packed(PackedQuant::from_ggml(other)?),
        })
    }

    /// Values per block: a row's length must be a multiple of it.
    pub fn block_values(self) -> usize {
        match self {
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::Bf16 => 1,
            WeightFormat::Packed(q) => q.block_values(),
        }
    }

    /// Bytes of one row of `cols` values (`cols` a multiple of [`Self::block_values`]); for the
    /// block quantizations, a sixteenth of a group.
    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            WeightFormat::F32 => 4 * cols,
            WeightFormat::F16 | WeightFormat::Bf16 => 2 * cols,
            WeightFormat::Packed(q) => packed_groups::group_bytes(q, cols) / GROUP_ROWS,
        }
    }

    /// Rows stored together: 16 for the block quantizations (`packed_groups`), else 1. A matrix's
    /// bytes can be cut only at multiples of it.
    pub fn row_group(self) -> usize {
        match self {
            WeightFormat::Packed(_) => GROUP_ROWS,
            _ => 1,
        }
    }

    /// Bytes of a `rows × cols` matrix (for block quantizations, whole groups).
    pub fn matrix_bytes(self, rows: usize, cols: usize) -> usize {
        match self {
            WeightFormat::Packed(q) => packed_groups::matrix_bytes(q, rows, cols),
            _ => rows * self.row_bytes(cols),
        }
    }

    /// Writes a `rows × cols` matrix from its ggml rows (`ggml_row(r)`, as a GGUF stores them)
    /// into `out` (`matrix_bytes` long) in this format's layout: floats copied, block
    /// quantizations regrouped.
    pub fn pack_ggml_matrix<'a>(self, rows: usize, cols: usize, ggml_row: impl Fn(usize) -> &'a [u8], out: &mut [u8]) {
        assert_eq!(out.len(), self.matrix_bytes(rows, cols), "packed {} matrix length", self.name());
        match self {
            WeightFormat::Packed(q) => {
                let group_bytes = packed_groups::group_bytes(q, cols).max(1);
                for (g, group) in out.chunks_exact_mut(group_bytes).enumerate() {
                    let first = g * GROUP_ROWS;
                    let count = GROUP_ROWS.min(rows - first);
                    packed_groups::pack_group(q, cols, count, |r| ggml_row(first + r), group);
                }
            }
            _ => {
                let row_bytes = self.row_bytes(cols);
                for (r, out) in out.chunks_exact_mut(row_bytes.max(1)).enumerate() {
                    let source = ggml_row(r);
                    assert_eq!(source.len(), row_bytes, "row {r} of a {} matrix with {cols} columns", self.name());
                    out.copy_from_slice(source);
                }
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Packed(q) => q.name(),
        }
    }
}

/// A row-major matrix `[rows, cols]` in its stored format; rows are what matmuls stream.
#[derive(Clone)]
pub struct WeightMatrix {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    bytes: SharedBytes,
    range: std::ops::Range<usize>,
}

/// The stored elements of a matrix, borrowed.
pub enum MatrixElements<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
    /// `format.matrix_bytes(rows, cols)` bytes of a quantized format (rows or groups of rows back
    /// to back), unaligned.
    Quantized(&'a [u8]),
}

impl WeightMatrix {
    pub fn from_f32(rows: usize, cols: usize, values: Vec<f32>) -> WeightMatrix {
        assert_eq!(values.len(), rows * cols, "matrix values must fill [rows, cols]");
        let bytes: Vec<u8> = bytemuck::cast_slice(&values).to_vec();
        Self::from_owned_bytes(WeightFormat::F32, rows, cols, bytes)
    }

    pub fn from_f16(rows: usize, cols: usize, values: Vec<f16>) -> WeightMatrix {
        assert_eq!(values.len(), rows * cols, "matrix values must fill [rows, cols]");
        let bytes: Vec<u8> = bytemuck::cast_slice(&values).to_vec();
        Self::from_owned_bytes(WeightFormat::F16, rows, cols, bytes)
    }

    pub fn from_bf16(rows: usize, cols: usize, values: Vec<bf16>) -> WeightMatrix {
        assert_eq!(values.len(), rows * cols, "matrix values must fill [rows, cols]");
        let bytes: Vec<u8> = bytemuck::cast_slice(&values).to_vec();
        Self::from_owned_bytes(WeightFormat::Bf16, rows, cols, bytes)
    }

    /// A matrix from ggml-encoded rows (as a GGUF stores them): `ggml_row(r)` returns the bytes
    /// of row r. Block quantizations are regrouped into kiln's row layouts; floats are copied.
    pub fn from_ggml_rows<'a>(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        ggml_row: impl Fn(usize) -> &'a [u8],
    ) -> WeightMatrix {
        let (bytes, range) = owned_storage(format.matrix_bytes(rows, cols), |bytes| {
            format.pack_ggml_matrix(rows, cols, ggml_row, bytes)
        });
        WeightMatrix { format, rows, cols, bytes, range }
    }

    /// A copy of `bytes` (the matrix in `format`) in memory of its own: see [`owned_storage`].
    pub fn copied(format: WeightFormat, rows: usize, cols: usize, bytes: &[u8]) -> WeightMatrix {
        assert_eq!(bytes.len(), format.matrix_bytes(rows, cols), "the bytes must hold [rows, cols]");
        let (bytes, range) = owned_storage(bytes.len(), |out| out.copy_from_slice(bytes));
        WeightMatrix { format, rows, cols, bytes, range }
    }

    /// Quantizes f32 values with ggml's rounding: for tests and random-weight benchmarks.
    pub fn quantized_from_f32(format: PackedQuant, rows: usize, cols: usize, values: &[f32]) -> WeightMatrix {
        assert_eq!(values.len(), rows * cols, "matrix values must fill [rows, cols]");
        let ggml: Vec<Vec<u8>> =
            values.chunks_exact(cols).map(|row| packed_quant::quantize_to_ggml_row(format, row)).collect();
        Self::from_ggml_rows(WeightFormat::Packed(format), rows, cols, |r| &ggml[r])
    }

    /// A view of `range` inside `bytes` (a memory map), which must hold the matrix in `format`.
    pub fn from_shared(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        bytes: SharedBytes,
        range: std::ops::Range<usize>,
    ) -> WeightMatrix {
        assert_eq!(range.len(), format.matrix_bytes(rows, cols), "the byte range must hold [rows, cols]");
        let element_align = match format {
            WeightFormat::F32 => 4,
            WeightFormat::F16 | WeightFormat::Bf16 => 2,
            _ => 1,
        };
        let start = (*bytes).as_ref()[range.clone()].as_ptr();
        if !(start as usize).is_multiple_of(element_align) {
            let owned = (*bytes).as_ref()[range].to_vec();
            return Self::from_owned_bytes(format, rows, cols, owned);
        }
        WeightMatrix { format, rows, cols, bytes, range }
    }

    fn from_owned_bytes(format: WeightFormat, rows: usize, cols: usize, bytes: Vec<u8>) -> WeightMatrix {
        Self::copied(format, rows, cols, &bytes)
    }

    /// The float dtype, for f32/f16/bf16 matrices.
    pub fn float_dtype(&self) -> Option<WeightDtype> {
        match self.format {
            WeightFormat::F32 => Some(WeightDtype::F32),
            WeightFormat::F16 => Some(WeightDtype::F16),
            WeightFormat::Bf16 => Some(WeightDtype::Bf16),
            _ => None,
        }
    }

    /// The same matrix over other storage holding identical bytes at `range` (see
    /// `weight_arena`).
    pub fn with_storage(&self, bytes: SharedBytes, range: std::ops::Range<usize>) -> WeightMatrix {
        assert_eq!(range.len(), self.range.len(), "the new storage must hold the whole matrix");
        // Comparing the contents would read the old bytes back in (a released file mapping)
        // and cost a pass over the model: checked in debug builds only.
        debug_assert!((*bytes).as_ref()[range.clone()] == *self.bytes(), "the new storage must hold the same bytes");
        WeightMatrix { format: self.format, rows: self.rows, cols: self.cols, bytes, range }
    }

    /// Rows `rows` of this matrix, a view of the same bytes (a tensor-parallel rank's share of
    /// the output features).
    pub fn row_slice(&self, rows: std::ops::Range<usize>) -> WeightMatrix {
        assert!(rows.start <= rows.end && rows.end <= self.rows, "rows {rows:?} of a {}-row matrix", self.rows);
        let group = self.format.row_group();
        assert!(
            rows.start.is_multiple_of(group) && (rows.end.is_multiple_of(group) || rows.end == self.rows),
            "a {} matrix is cut only at multiples of {group} rows",
            self.format.name()
        );
        let start = self.range.start + self.format.matrix_bytes(rows.start, self.cols);
        let range = start..start + self.format.matrix_bytes(rows.len(), self.cols);
        WeightMatrix { format: self.format, rows: rows.len(), cols: self.cols, bytes: self.bytes.clone(), range }
    }

    /// Tells the owner of this view's bytes that they have been copied elsewhere (see
    /// [`WeightBytes::release`]); the view stays valid.
    pub fn release_source(&self) {
        self.bytes.release(self.range.clone());
    }

    /// Whether the matrix's bytes sit in a `weight_arena::Arena` (huge-page memory).
    pub fn in_weight_arena(&self) -> bool {
        self.bytes.in_weight_arena()
    }

    /// Whether both are views of the same bytes in memory (tied embeddings).
    pub fn same_view(&self, other: &WeightMatrix) -> bool {
        std::ptr::eq(self.bytes(), other.bytes()) && self.format == other.format
    }

    /// The raw bytes of the whole matrix, rows back to back.
    pub fn bytes(&self) -> &[u8] {
        &(*self.bytes).as_ref()[self.range.clone()]
    }

    /// Bytes of one stored row.
    pub fn row_bytes(&self) -> usize {
        self.format.row_bytes(self.cols)
    }

    pub fn elements(&self) -> MatrixElements<'_> {
        let bytes = self.bytes();
        // Alignment was checked when the view was made (from_shared copies misaligned tensors).
        match self.format {
            WeightFormat::F32 => MatrixElements::F32(bytemuck::cast_slice(bytes)),
            WeightFormat::F16 => MatrixElements::F16(bytemuck::cast_slice(bytes)),
            WeightFormat::Bf16 => MatrixElements::Bf16(bytemuck::cast_slice(bytes)),
            WeightFormat::Packed(_) => MatrixElements::Quantized(bytes),
        }
    }

    /// Writes row `row` as f32 into `out` (`out.len() == cols`).
    pub fn row_to_f32(&self, row: usize, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.cols);
        let span = row * self.cols..(row + 1) * self.cols;
        match self.elements() {
            MatrixElements::F32(v) => out.copy_from_slice(&v[span]),
            MatrixElements::F16(v) => {
                use half::slice::HalfFloatSliceExt;
                v[span].convert_to_f32_slice(out)
            }
            MatrixElements::Bf16(v) => {
                use half::slice::HalfFloatSliceExt;
                v[span].convert_to_f32_slice(out)
            }
            MatrixElements::Quantized(bytes) => {
                let WeightFormat::Packed(q) = self.format else { unreachable!("only block formats are quantized") };
                let group_bytes = packed_groups::group_bytes(q, self.cols);
                let group = &bytes[row / GROUP_ROWS * group_bytes..][..group_bytes];
                packed_groups::dequantize_group_row(q, group, row % GROUP_ROWS, out)
            }
        }
    }

    pub fn size_bytes(&self) -> usize {
        self.range.len()
    }
}

/// Size from which matrices get memory of their own, aligned for 2 MiB pages.
const HUGE_PAGE: usize = 2 << 20;

/// Memory for `len` bytes filled by `fill`, as an owner and the range that holds them. A large
/// matrix gets anonymous memory advised for transparent huge pages and aligned to 2 MiB: decode
/// streams every weight once per token, and with 4 KiB pages the page walks (dearer still under
/// virtualization) cost a visible share of the memory bandwidth. Small ones go in a Vec of u64,
/// so any float view is aligned.
fn owned_storage(len: usize, fill: impl FnOnce(&mut [u8])) -> (SharedBytes, std::ops::Range<usize>) {
    let map = if len >= HUGE_PAGE { memmap2::MmapMut::map_anon(len + HUGE_PAGE).ok() } else { None };
    match map {
        Some(mut map) => {
            // Only a hint: without huge pages the memory works the same.
            let _ = map.advise(memmap2::Advice::HugePage);
            let start = (HUGE_PAGE - map.as_ptr() as usize % HUGE_PAGE) % HUGE_PAGE;
            fill(&mut map[start..start + len]);
            (Arc::new(AnonymousBytes(map)), start..start + len)
        }
        None => {
            let mut words = vec![0u64; len.div_ceil(8)];
            fill(&mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..len]);
            (Arc::new(AlignedBytes(words)), 0..len)
        }
    }
}

struct AnonymousBytes(memmap2::MmapMut);

impl WeightBytes for AnonymousBytes {}

impl AsRef<[u8]> for AnonymousBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

struct AlignedBytes(Vec<u64>);

impl WeightBytes for AlignedBytes {}

impl AsRef<[u8]> for AlignedBytes {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

pub struct LayerWeights {
    pub input_norm: Vec<f32>,          // [hidden]
    pub q_proj: WeightMatrix,          // [num_heads * head_dim, hidden]
    pub k_proj: WeightMatrix,          // [num_kv_heads * head_dim, hidden]
    pub v_proj: WeightMatrix,          // [num_kv_heads * head_dim, hidden]
    pub o_proj: WeightMatrix,          // [hidden, num_heads * head_dim]
    pub post_attention_norm: Vec<f32>, // [hidden]
    pub gate_proj: WeightMatrix,       // [intermediate, hidden]
    pub up_proj: WeightMatrix,         // [intermediate, hidden]
    pub down_proj: WeightMatrix,       // [hidden, intermediate]
}

pub struct LlamaWeights {
    pub embed_tokens: WeightMatrix, // [vocab, hidden]
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>, // [hidden]
    /// The output projection; the same matrix as `embed_tokens` when embeddings are tied.
    pub lm_head: WeightMatrix, // [vocab, hidden]
}

impl LlamaWeights {
    /// Loads and shape-checks every tensor of a Hugging Face Llama directory.
    pub fn load(dir: &Path, config: &ModelConfig) -> Result<LlamaWeights, ModelError> {
        let files = SafetensorsDir::open(dir)?;
        Self::from_tensors(&files, config, dir)
    }

    pub fn from_tensors(files: &SafetensorsDir, config: &ModelConfig, dir: &Path) -> Result<LlamaWeights, ModelError> {
        let h = config.hidden_size;
        let matrix = |name: &str, rows: usize, cols: usize| load_matrix(files, dir, name, rows, cols);
        let vector = |name: &str, len: usize| load_vector(files, dir, name, len);
        let embed_tokens = matrix("model.embed_tokens.weight", config.vocab_size, h)?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = format!("model.layers.{i}");
            layers.push(LayerWeights {
                input_norm: vector(&format!("{p}.input_layernorm.weight"), h)?,
                q_proj: matrix(&format!("{p}.self_attn.q_proj.weight"), config.q_dim(), h)?,
                k_proj: matrix(&format!("{p}.self_attn.k_proj.weight"), config.kv_dim(), h)?,
                v_proj: matrix(&format!("{p}.self_attn.v_proj.weight"), config.kv_dim(), h)?,
                o_proj: matrix(&format!("{p}.self_attn.o_proj.weight"), h, config.q_dim())?,
                post_attention_norm: vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
                gate_proj: matrix(&format!("{p}.mlp.gate_proj.weight"), config.intermediate_size, h)?,
                up_proj: matrix(&format!("{p}.mlp.up_proj.weight"), config.intermediate_size, h)?,
                down_proj: matrix(&format!("{p}.mlp.down_proj.weight"), h, config.intermediate_size)?,
            });
        }
        let final_norm = vector("model.norm.weight", h)?;
        let lm_head = if files.get("lm_head.weight").is_some() {
            matrix("lm_head.weight", config.vocab_size, h)?
        } else if config.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            return Err(ModelError::MissingTensor { path: dir.into(), name: "lm_head.weight".into() });
        };
        Ok(LlamaWeights { embed_tokens, layers, final_norm, lm_head })
    }
}

fn load_matrix(
    files: &SafetensorsDir,
    dir: &Path,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<WeightMatrix, ModelError> {
    let location = files.get(name).ok_or_else(|| ModelError::MissingTensor { path: dir.into(), name: name.into() })?;
    if location.shape != [rows, cols] {
        return Err(ModelError::WrongShape {
            path: location.file.clone(),
            name: name.into(),
            got: location.shape.clone(),
            expected: vec![rows, cols],
        });
    }
    let (bytes, range) = location.shared_bytes();
    Ok(WeightMatrix::from_shared(WeightFormat::from_dtype(location.dtype), rows, cols, bytes, range))
}

fn load_vector(files: &SafetensorsDir, dir: &Path, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let location = files.get(name).ok_or_else(|| ModelError::MissingTensor { path: dir.into(), name: name.into() })?;
    if location.shape != [len] {
        return Err(ModelError::WrongShape {
            path: location.file.clone(),
            name: name.into(),
            got: location.shape.clone(),
            expected: vec![len],
        });
    }
    let (bytes, range) = location.shared_bytes();
    let matrix = WeightMatrix::from_shared(WeightFormat::from_dtype(location.dtype), 1, len, bytes, range);
    let mut out = vec![0.0; len];
    matrix.row_to_f32(0, &mut out);
    Ok(out)
}
