//! Reader for GGUF files (v2 and v3, little-endian): header, metadata, tensor table, and the
//! tensor bytes, memory-mapped. Written by hand because the format is small and every read must
//! be bounds-checked: a corrupt file yields `ModelError::Invalid`, never a panic or an allocation
//! sized by an unchecked count.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::quant::{self, GgmlType};
use super::ModelError;
use reader::{check_tensor, Reader};

mod metadata;
mod reader;
#[cfg(test)]
mod tests;
pub mod writer;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: usize = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: usize = 4;
/// Arrays of arrays are legal GGUF but no model uses more than one level; a deeper nesting is a
/// corrupt file, and the limit keeps recursion bounded.
const MAX_ARRAY_DEPTH: usize = 3;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// The value as an integer, whatever integer type the writer chose (converters disagree on
    /// u32 vs i32 vs u64 for the same key).
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }
}

/// One entry of the tensor table. `dims` are GGUF dims: `dims[0]` (ne0) is the contiguous one, so
/// a 2-D tensor with dims `[ne0, ne1]` is a row-major matrix of `ne1` rows of `ne0` values.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<usize>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the tensor's data in the file.
    data_start: usize,
    n_bytes: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        // Cannot overflow: check_tensor refused dims whose product (zeros aside) overflows.
        self.dims.iter().product()
    }
    /// Values per row (ne0).
    pub fn row_len(&self) -> usize {
        self.dims[0]
    }
    /// Rows: the product of every dim after the first.
    pub fn n_rows(&self) -> usize {
        self.dims[1..].iter().product()
    }
    pub fn row_bytes(&self) -> usize {
        self.n_bytes.checked_div(self.n_rows()).unwrap_or(0)
    }
    pub fn n_bytes(&self) -> usize {
        self.n_bytes
    }
}

/// Keeps the file's bytes alive: a memory map for real files, a vector for bytes built in memory.
enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(map) => map,
            Storage::Owned(bytes) => bytes,
        }
    }
}

/// An opened, fully validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    version: u32,
    alignment: usize,
    data_offset: usize,
    metadata: HashMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and validates `path`: the header, every metadata value and every tensor's bounds.
    pub fn open(path: &Path) -> Result<GgufFile, ModelError> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        if len < 4 {
            return Err(ModelError::invalid(path, format!("not a GGUF file: only {len} bytes")));
        }
        // SAFETY: the map is read-only and kiln never writes to a GGUF it reads. If another
        // process truncates the file while it is mapped, reads fault; every mmap-based model
        // loader accepts that contract in exchange for not copying gigabytes.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        GgufFile::parse(path, Storage::Mapped(map))
    }

    /// Parses a GGUF held in memory; `path` is only used in error messages.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<GgufFile, ModelError> {
        GgufFile::parse(path, Storage::Owned(bytes))
    }

    fn parse(path: &Path, storage: Storage) -> Result<GgufFile, ModelError> {
        let bytes = storage.bytes();
        let mut reader = Reader { bytes, pos: 0, path };
        let magic = reader.take(4, "magic")?;
        if magic != MAGIC {
            return Err(reader.invalid(format!("not a GGUF file: starts with {magic:02x?}, expected \"GGUF\"")));
        }
        let version = reader.u32("version")?;
        match version {
            2 | 3 => {}
            1 => return Err(reader.invalid("GGUF version 1 is not supported (re-convert the model; v2 and v3 are)")),
            v if v.swap_bytes() <= 3 => {
                return Err(reader.invalid("big-endian GGUF files are not supported"));
            }
            v => return Err(reader.invalid(format!("unsupported GGUF version {v} (supported: 2, 3)"))),
        }
        // Minimum encoded sizes bound the counts before anything is allocated.
        const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 8 + 4 + 8;
        const MIN_KV_BYTES: usize = 8 + 4 + 1;
        let n_tensors = reader.count("tensor count", MIN_TENSOR_INFO_BYTES)?;
        let n_kv = reader.count("metadata count", MIN_KV_BYTES)?;

        let mut metadata = HashMap::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = reader.string("metadata key")?;
            let value_type = reader.u32(&format!("type of metadata `{key}`"))?;
            let value = reader.value(value_type, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(reader.invalid(format!("metadata key `{key}` appears twice")));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(MetaValue::U32(a)) if a.is_power_of_two() => *a as usize,
            Some(other) => {
                return Err(reader.invalid(format!("general.alignment must be a power-of-two u32, got {other:?}")))
            }
        };

        let mut raw_tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            raw_tensors.push(reader.tensor_info()?);
        }
        let data_offset = reader.pos.div_ceil(alignment) * alignment;

        let mut tensors = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for raw in raw_tensors {
            let info = check_tensor(&reader, raw, data_offset, alignment)?;
            if tensor_index.insert(info.name.clone(), tensors.len()).is_some() {
                return Err(reader.invalid(format!("tensor `{}` appears twice", info.name)));
            }
            tensors.push(info);
        }

        Ok(GgufFile {
            path: path.to_path_buf(),
            storage,
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
            tensor_index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> usize {
        self.alignment
    }
    /// Byte offset where the tensor data section starts.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    // ---- metadata ----

    pub fn metadata(&self) -> &HashMap<String, MetaValue> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo, ModelError> {
        self.tensor(name).ok_or_else(|| ModelError::MissingTensor { path: self.path.clone(), name: name.to_string() })
    }

    /// Where a tensor's bytes lie in the file: for loaders that map the file themselves and keep
    /// views into it.
    pub fn tensor_file_range(&self, info: &TensorInfo) -> std::ops::Range<usize> {
        info.data_start..info.data_start + info.n_bytes
    }

    /// The raw bytes of a tensor of this file.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        self.storage
            .bytes()
            .get(info.data_start..info.data_start + info.n_bytes)
            .expect("TensorInfo comes from this GgufFile, whose parse checked that its data lies inside the file")
    }

    /// Dequantizes row `row` (a run of ne0 values) of a tensor into `out` (length ne0).
    pub fn dequantize_row(&self, info: &TensorInfo, row: usize, out: &mut [f32]) -> Result<(), ModelError> {
        let row_bytes = info.row_bytes();
        let data = self.tensor_data(info);
        let range = row.checked_mul(row_bytes).and_then(|start| Some(start..start.checked_add(row_bytes)?));
        let bytes = range.and_then(|range| data.get(range)).ok_or_else(|| {
            ModelError::invalid(
                &self.path,
                format!("tensor `{}` has {} rows, asked for row {row}", info.name, info.n_rows()),
            )
        })?;
        quant::dequantize_row(info.ggml_type, bytes, out)
            .map_err(|e| ModelError::invalid(&self.path, format!("tensor `{}`: {e}", info.name)))
    }

    /// Dequantizes a whole tensor to f32 (row-major, ne0 fastest). Meant for small tensors and
    /// tests; conversion streams row by row instead.
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>, ModelError> {
        let row_len = info.row_len();
        let mut values = vec![0f32; info.n_elements()];
        if row_len == 0 {
            return Ok(values);
        }
        for (row, out) in values.chunks_exact_mut(row_len).enumerate() {
            self.dequantize_row(info, row, out)?;
        }
        Ok(values)
    }
}
