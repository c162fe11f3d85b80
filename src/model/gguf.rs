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
        // Cannot overflow: open() checked that the byte size fits in the file.
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

    fn wrong_type(&self, key: &str, wanted: &str, got: &MetaValue) -> ModelError {
        ModelError::invalid(&self.path, format!("metadata `{key}` should be {wanted}, found {}", got.type_name()))
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::invalid(&self.path, format!("metadata `{key}` is missing"))
    }

    /// A string value; `Ok(None)` when the key is absent, an error when it has another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, ModelError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    pub fn require_str(&self, key: &str) -> Result<&str, ModelError> {
        self.get_str(key)?.ok_or_else(|| self.missing(key))
    }

    /// A non-negative integer of any integer type, as u64.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, ModelError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(value) => match value.as_i128().and_then(|v| u64::try_from(v).ok()) {
                Some(v) => Ok(Some(v)),
                None => Err(self.wrong_type(key, "a non-negative integer", value)),
            },
        }
    }

    pub fn get_u32(&self, key: &str) -> Result<Option<u32>, ModelError> {
        match self.get_u64(key)? {
            None => Ok(None),
            Some(v) => u32::try_from(v)
                .map(Some)
                .map_err(|_| ModelError::invalid(&self.path, format!("metadata `{key}` = {v} does not fit in u32"))),
        }
    }

    pub fn get_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        match self.get_u64(key)? {
            None => Ok(None),
            Some(v) => usize::try_from(v)
                .map(Some)
                .map_err(|_| ModelError::invalid(&self.path, format!("metadata `{key}` = {v} is too large"))),
        }
    }

    pub fn require_usize(&self, key: &str) -> Result<usize, ModelError> {
        self.get_usize(key)?.ok_or_else(|| self.missing(key))
    }

    /// A float (f32, or f64 narrowed to f32).
    pub fn get_f32(&self, key: &str) -> Result<Option<f32>, ModelError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::F32(v)) => Ok(Some(*v)),
            Some(MetaValue::F64(v)) => Ok(Some(*v as f32)),
            Some(other) => Err(self.wrong_type(key, "a float", other)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, ModelError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::Bool(v)) => Ok(Some(*v)),
            Some(other) => Err(self.wrong_type(key, "a bool", other)),
        }
    }

    fn get_array(&self, key: &str) -> Result<Option<&[MetaValue]>, ModelError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(items)) => Ok(Some(items)),
            Some(other) => Err(self.wrong_type(key, "an array", other)),
        }
    }

    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, ModelError> {
        let Some(items) = self.get_array(key)? else { return Ok(None) };
        items
            .iter()
            .map(|item| match item {
                MetaValue::String(s) => Ok(s.as_str()),
                other => Err(self.wrong_type(key, "an array of strings", other)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// An array of integers (any integer element type) that fit in i32.
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>, ModelError> {
        let Some(items) = self.get_array(key)? else { return Ok(None) };
        items
            .iter()
            .map(|item| {
                item.as_i128()
                    .and_then(|v| i32::try_from(v).ok())
                    .ok_or_else(|| self.wrong_type(key, "an array of i32", item))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    // ---- tensors ----

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

/// A tensor-table entry as read, before its bounds are checked against the data section.
struct RawTensorInfo {
    name: String,
    dims: Vec<usize>,
    type_id: u32,
    offset: u64,
}

fn check_tensor(
    reader: &Reader,
    raw: RawTensorInfo,
    data_offset: usize,
    alignment: usize,
) -> Result<TensorInfo, ModelError> {
    let name = &raw.name;
    let ggml_type = GgmlType::from_id(raw.type_id)
        .ok_or_else(|| reader.invalid(format!("tensor `{name}` has unknown ggml type {}", raw.type_id)))?;
    let row_bytes = ggml_type.row_bytes(raw.dims[0]).ok_or_else(|| {
        reader.invalid(format!(
            "tensor `{name}`: row length {} is not a multiple of the {ggml_type} block size {}",
            raw.dims[0],
            ggml_type.block_size()
        ))
    })?;
    let n_bytes = raw.dims[1..]
        .iter()
        .try_fold(row_bytes, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| reader.invalid(format!("tensor `{name}`: dims {:?} overflow", raw.dims)))?;
    if !raw.offset.is_multiple_of(alignment as u64) {
        return Err(reader.invalid(format!("tensor `{name}`: offset {} is not aligned to {alignment}", raw.offset)));
    }
    let file_len = reader.bytes.len();
    let data_start = usize::try_from(raw.offset).ok().and_then(|o| o.checked_add(data_offset));
    match data_start.and_then(|start| start.checked_add(n_bytes).map(|end| (start, end))) {
        Some((start, end)) if end <= file_len => Ok(TensorInfo {
            name: raw.name,
            dims: raw.dims,
            ggml_type,
            data_start: start,
            n_bytes,
        }),
        _ => Err(reader.invalid(format!(
            "tensor `{name}` ({n_bytes} bytes at data offset {}) extends beyond the end of the file ({file_len} bytes); \
             the file is truncated or corrupt",
            raw.offset
        ))),
    }
}

/// A bounds-checked little-endian cursor over the file's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn invalid(&self, message: impl Into<String>) -> ModelError {
        ModelError::invalid(self.path, message)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ModelError> {
        if n > self.remaining() {
            return Err(self.invalid(format!(
                "truncated: {what} at byte {} needs {n} bytes but the file has {} bytes",
                self.pos,
                self.bytes.len()
            )));
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
        let slice = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A u64 count of items that each take at least `min_item_bytes`; a count the rest of the
    /// file cannot hold is rejected before anything is allocated for it.
    fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize, ModelError> {
        let n = self.u64(what)?;
        let max = (self.remaining() / min_item_bytes.max(1)) as u64;
        if n > max {
            return Err(self.invalid(format!(
                "{what} {n} is impossible: {} bytes remain after byte {}, room for at most {max}; \
                 the file is truncated or corrupt",
                self.remaining(),
                self.pos
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let len = self.count(&format!("length of {what}"), 1)?;
        let start = self.pos;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.invalid(format!("{what} at byte {start} is not valid UTF-8")))
    }

    fn value(&mut self, value_type: u32, key: &str, depth: usize) -> Result<MetaValue, ModelError> {
        let what = || format!("value of metadata `{key}`");
        Ok(match value_type {
            0 => MetaValue::U8(u8::from_le_bytes(self.array(&what())?)),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(&what())?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(&what())?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(&what())?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(&what())?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(&what())?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(&what())?)),
            7 => match self.array::<1>(&what())?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.invalid(format!("metadata `{key}`: bool byte is {b}, not 0 or 1"))),
            },
            8 => MetaValue::String(self.string(&what())?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.invalid(format!("metadata `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let element_type = self.u32(&format!("element type of metadata `{key}`"))?;
                let min_element_bytes = match element_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => {
                        return Err(self.invalid(format!("metadata `{key}`: unknown array element type {other}")));
                    }
                };
                let n = self.count(&format!("element count of metadata `{key}`"), min_element_bytes)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(element_type, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(&what())?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(&what())?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(&what())?)),
            other => return Err(self.invalid(format!("metadata `{key}` has unknown value type {other}"))),
        })
    }

    fn tensor_info(&mut self) -> Result<RawTensorInfo, ModelError> {
        let name = self.string("tensor name")?;
        let n_dims = self.u32(&format!("dimension count of tensor `{name}`"))? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.invalid(format!("tensor `{name}` has {n_dims} dimensions (must be 1 to {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            let dim = self.u64(&format!("dims of tensor `{name}`"))?;
            let dim = usize::try_from(dim)
                .map_err(|_| self.invalid(format!("tensor `{name}` has an absurd dimension {dim}")))?;
            dims.push(dim);
        }
        let type_id = self.u32(&format!("type of tensor `{name}`"))?;
        let offset = self.u64(&format!("offset of tensor `{name}`"))?;
        Ok(RawTensorInfo { name, dims, type_id, offset })
    }
}

/// A minimal GGUF writer so tests can build files byte by byte (including broken ones).
#[cfg(test)]
pub(crate) mod testing {
    use super::MetaValue;

    pub struct TestTensor {
        pub name: String,
        pub dims: Vec<u64>,
        pub type_id: u32,
        pub data: Vec<u8>,
    }

    pub struct GgufWriter {
        pub version: u32,
        pub alignment: usize,
        pub metadata: Vec<(String, MetaValue)>,
        pub tensors: Vec<TestTensor>,
    }

    impl GgufWriter {
        pub fn new() -> GgufWriter {
            GgufWriter { version: 3, alignment: 32, metadata: Vec::new(), tensors: Vec::new() }
        }

        pub fn kv(mut self, key: &str, value: MetaValue) -> GgufWriter {
            self.metadata.push((key.to_string(), value));
            self
        }

        pub fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> GgufWriter {
            self.tensors.push(TestTensor { name: name.to_string(), dims: dims.to_vec(), type_id, data });
            self
        }

        pub fn f32_tensor(self, name: &str, dims: &[u64], values: &[f32]) -> GgufWriter {
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.tensor(name, dims, 0, data)
        }

        fn put_string(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }

        fn type_id(value: &MetaValue) -> u32 {
            match value {
                MetaValue::U8(_) => 0,
                MetaValue::I8(_) => 1,
                MetaValue::U16(_) => 2,
                MetaValue::I16(_) => 3,
                MetaValue::U32(_) => 4,
                MetaValue::I32(_) => 5,
                MetaValue::F32(_) => 6,
                MetaValue::Bool(_) => 7,
                MetaValue::String(_) => 8,
                MetaValue::Array(_) => 9,
                MetaValue::U64(_) => 10,
                MetaValue::I64(_) => 11,
                MetaValue::F64(_) => 12,
            }
        }

        fn put_value(out: &mut Vec<u8>, value: &MetaValue) {
            match value {
                MetaValue::U8(v) => out.extend(v.to_le_bytes()),
                MetaValue::I8(v) => out.extend(v.to_le_bytes()),
                MetaValue::U16(v) => out.extend(v.to_le_bytes()),
                MetaValue::I16(v) => out.extend(v.to_le_bytes()),
                MetaValue::U32(v) => out.extend(v.to_le_bytes()),
                MetaValue::I32(v) => out.extend(v.to_le_bytes()),
                MetaValue::U64(v) => out.extend(v.to_le_bytes()),
                MetaValue::I64(v) => out.extend(v.to_le_bytes()),
                MetaValue::F32(v) => out.extend(v.to_le_bytes()),
                MetaValue::F64(v) => out.extend(v.to_le_bytes()),
                MetaValue::Bool(v) => out.push(*v as u8),
                MetaValue::String(s) => Self::put_string(out, s),
                MetaValue::Array(items) => {
                    // An empty array's element type is arbitrary; u8 is as good as any.
                    let element_type = items.first().map(Self::type_id).unwrap_or(0);
                    out.extend(element_type.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    for item in items {
                        Self::put_value(out, item);
                    }
                }
            }
        }

        pub fn to_bytes(&self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend(self.version.to_le_bytes());
            out.extend((self.tensors.len() as u64).to_le_bytes());
            out.extend((self.metadata.len() as u64).to_le_bytes());
            for (key, value) in &self.metadata {
                Self::put_string(&mut out, key);
                out.extend(Self::type_id(value).to_le_bytes());
                Self::put_value(&mut out, value);
            }
            let align = |n: usize| n.div_ceil(self.alignment) * self.alignment;
            let mut offset = 0usize;
            let mut offsets = Vec::new();
            for tensor in &self.tensors {
                Self::put_string(&mut out, &tensor.name);
                out.extend((tensor.dims.len() as u32).to_le_bytes());
                for d in &tensor.dims {
                    out.extend(d.to_le_bytes());
                }
                out.extend(tensor.type_id.to_le_bytes());
                out.extend((offset as u64).to_le_bytes());
                offsets.push(offset);
                offset = align(offset + tensor.data.len());
            }
            let data_start = align(out.len());
            out.resize(data_start, 0);
            for (tensor, offset) in self.tensors.iter().zip(offsets) {
                out.resize(data_start + offset, 0);
                out.extend(&tensor.data);
            }
            out
        }
    }

    pub fn string(s: &str) -> MetaValue {
        MetaValue::String(s.to_string())
    }

    pub fn strings(items: &[&str]) -> MetaValue {
        MetaValue::Array(items.iter().map(|s| string(s)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn parse(bytes: Vec<u8>) -> Result<GgufFile, ModelError> {
        GgufFile::from_bytes(Path::new("test.gguf"), bytes)
    }

    fn small_file() -> GgufWriter {
        GgufWriter::new()
            .kv("general.architecture", string("llama"))
            .kv("llama.block_count", MetaValue::U32(2))
            .kv("count.i32", MetaValue::I32(7))
            .kv("eps", MetaValue::F32(1e-5))
            .kv("flag", MetaValue::Bool(true))
            .kv("big", MetaValue::U64(1 << 40))
            .kv("tokens", strings(&["<s>", "a", "b c"]))
            .kv("types", MetaValue::Array(vec![MetaValue::I32(3), MetaValue::I32(1), MetaValue::I32(-1)]))
            .f32_tensor("norm.weight", &[4], &[1.0, 2.0, 3.0, 4.0])
            .f32_tensor("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
            // One Q8_0 block: d = 1.0, q = 0..32.
            .tensor("q", &[32], 8, [0x00, 0x3C].into_iter().chain(0u8..32).collect())
    }

    #[test]
    fn reads_metadata_of_every_kind() {
        let gguf = parse(small_file().to_bytes()).unwrap();
        assert_eq!(gguf.version(), 3);
        assert_eq!(gguf.require_str("general.architecture").unwrap(), "llama");
        assert_eq!(gguf.get_u32("llama.block_count").unwrap(), Some(2));
        assert_eq!(gguf.require_usize("count.i32").unwrap(), 7);
        assert_eq!(gguf.get_f32("eps").unwrap(), Some(1e-5));
        assert_eq!(gguf.get_bool("flag").unwrap(), Some(true));
        assert_eq!(gguf.get_u64("big").unwrap(), Some(1 << 40));
        assert!(gguf.get_u32("big").is_err(), "2^40 does not fit in u32");
        assert_eq!(gguf.get_str_array("tokens").unwrap(), Some(vec!["<s>", "a", "b c"]));
        assert_eq!(gguf.get_i32_array("types").unwrap(), Some(vec![3, 1, -1]));
        assert_eq!(gguf.get_str("absent").unwrap(), None);
        let err = gguf.get_str("eps").unwrap_err();
        assert_eq!(err.to_string(), "test.gguf: metadata `eps` should be a string, found f32");
        let err = gguf.require_usize("absent").unwrap_err();
        assert_eq!(err.to_string(), "test.gguf: metadata `absent` is missing");
        assert!(gguf.get_usize("types").is_err());
    }

    #[test]
    fn reads_tensors() {
        let gguf = parse(small_file().to_bytes()).unwrap();
        assert_eq!(gguf.tensors().len(), 3);
        let w = gguf.tensor("w").unwrap();
        assert_eq!((w.dims.as_slice(), w.ggml_type, w.row_len(), w.n_rows()), (&[2, 3][..], GgmlType::F32, 2, 3));
        assert_eq!(gguf.dequantize(w).unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let mut row = [0f32; 2];
        gguf.dequantize_row(w, 2, &mut row).unwrap();
        assert_eq!(row, [5.0, 6.0]);
        assert!(gguf.dequantize_row(w, 3, &mut row).is_err());
        let q = gguf.tensor("q").unwrap();
        assert_eq!(gguf.tensor_data(q).len(), 34);
        let values = gguf.dequantize(q).unwrap();
        assert_eq!(values[31], 31.0);
        assert_eq!(gguf.data_offset() % 32, 0);
        assert!(matches!(gguf.require_tensor("nope"), Err(ModelError::MissingTensor { .. })));
    }

    #[test]
    fn honours_alignment_and_version_2() {
        let mut writer = small_file().kv("general.alignment", MetaValue::U32(64));
        writer.alignment = 64;
        writer.version = 2;
        let gguf = parse(writer.to_bytes()).unwrap();
        assert_eq!((gguf.alignment(), gguf.version()), (64, 2));
        assert_eq!(gguf.data_offset() % 64, 0);
        assert_eq!(gguf.dequantize(gguf.tensor("norm.weight").unwrap()).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = small_file().to_bytes();
        // The last tensor (34 bytes) ends the file, so every strict prefix is missing something.
        for len in 0..bytes.len() {
            let err = parse(bytes[..len].to_vec()).expect_err(&format!("a prefix of {len} bytes parsed"));
            let message = err.to_string();
            assert!(message.starts_with("test.gguf: "), "{message}");
        }
        assert!(parse(bytes).is_ok());
    }

    #[test]
    fn every_single_byte_corruption_is_handled() {
        // Flipping any byte must give Ok (a value changed) or an error, never a panic or a huge
        // allocation (the counts are checked against the bytes left).
        let bytes = small_file().to_bytes();
        for i in 0..bytes.len() {
            for flip in [0xFFu8, 0x80, 0x01] {
                let mut corrupt = bytes.clone();
                corrupt[i] ^= flip;
                let _ = parse(corrupt);
            }
        }
    }

    #[test]
    fn rejects_bad_headers_with_clear_messages() {
        let good = small_file().to_bytes();
        let mut bad_magic = good.clone();
        bad_magic[..4].copy_from_slice(b"GGML");
        let err = parse(bad_magic).unwrap_err().to_string();
        assert!(err.contains("not a GGUF file"), "{err}");

        let mut v1 = good.clone();
        v1[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(parse(v1).unwrap_err().to_string().contains("version 1 is not supported"));

        let mut big_endian = good.clone();
        big_endian[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(parse(big_endian).unwrap_err().to_string().contains("big-endian"));

        let mut absurd = good.clone();
        absurd[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = parse(absurd).unwrap_err().to_string();
        assert!(err.contains("tensor count 18446744073709551615 is impossible"), "{err}");
    }

    #[test]
    fn rejects_bad_tensors() {
        let err = |writer: GgufWriter| parse(writer.to_bytes()).unwrap_err().to_string();
        let unknown_type = GgufWriter::new().tensor("t", &[4], 99, vec![0; 16]);
        assert!(err(unknown_type).contains("tensor `t` has unknown ggml type 99"));
        let ragged = GgufWriter::new().tensor("t", &[33], 8, vec![0; 68]);
        assert!(err(ragged).contains("not a multiple of the Q8_0 block size 32"));
        let five_dims = GgufWriter::new().tensor("t", &[1, 1, 1, 1, 1], 0, vec![0; 4]);
        assert!(err(five_dims).contains("5 dimensions"));
        let overflow = GgufWriter::new().tensor("t", &[1 << 40, 1 << 40], 0, vec![0; 4]);
        assert!(err(overflow).contains("overflow"));

        // A tensor table that claims more data than the file holds.
        let mut bytes = GgufWriter::new().f32_tensor("t", &[4], &[0.0; 4]).to_bytes();
        bytes.truncate(bytes.len() - 1);
        let message = parse(bytes).unwrap_err().to_string();
        assert!(
            message.contains("tensor `t` (16 bytes at data offset 0) extends beyond the end of the file"),
            "{message}"
        );

        let duplicate = GgufWriter::new().f32_tensor("t", &[1], &[0.0]).f32_tensor("t", &[1], &[0.0]);
        assert!(err(duplicate).contains("tensor `t` appears twice"));
        let bad_alignment = GgufWriter::new().kv("general.alignment", MetaValue::U32(24));
        assert!(err(bad_alignment).contains("general.alignment must be a power-of-two"));
    }

    #[test]
    fn rejects_bad_metadata() {
        // Offsets: a 24-byte header, then the key (8-byte length + text), the u32 type, the value.
        let mut bytes = GgufWriter::new().kv("flag", MetaValue::Bool(true)).to_bytes();
        bytes[24 + 12 + 4] = 7;
        assert!(parse(bytes).unwrap_err().to_string().contains("bool byte is 7"));

        let mut bytes = GgufWriter::new().kv("k", MetaValue::U8(0)).to_bytes();
        bytes[24 + 9..24 + 13].copy_from_slice(&42u32.to_le_bytes());
        assert!(parse(bytes).unwrap_err().to_string().contains("metadata `k` has unknown value type 42"));

        let mut bytes = GgufWriter::new().kv("s", string("\u{e9}")).to_bytes();
        bytes[24 + 9 + 4 + 8 + 1] = 0xFF;
        assert!(parse(bytes).unwrap_err().to_string().contains("not valid UTF-8"));

        let nested = (0..5).fold(MetaValue::U8(1), |inner, _| MetaValue::Array(vec![inner]));
        let bytes = GgufWriter::new().kv("deep", nested).to_bytes();
        assert!(parse(bytes).unwrap_err().to_string().contains("nested deeper"));

        let duplicate = GgufWriter::new().kv("k", MetaValue::U8(0)).kv("k", MetaValue::U8(1)).to_bytes();
        assert!(parse(duplicate).unwrap_err().to_string().contains("metadata key `k` appears twice"));
    }

    #[test]
    fn open_maps_a_real_file_and_names_it_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, small_file().to_bytes()).unwrap();
        let gguf = GgufFile::open(&path).unwrap();
        assert_eq!(gguf.path(), path);
        assert_eq!(gguf.dequantize(gguf.tensor("norm.weight").unwrap()).unwrap(), vec![1.0, 2.0, 3.0, 4.0]);

        let empty = dir.path().join("empty.gguf");
        std::fs::write(&empty, b"").unwrap();
        let err = GgufFile::open(&empty).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: not a GGUF file", empty.display())), "{err}");
        let missing = dir.path().join("missing.gguf");
        assert!(matches!(GgufFile::open(&missing), Err(ModelError::Io { .. })));
    }
}
