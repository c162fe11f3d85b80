//! The bounds-checked byte cursor the parser reads a GGUF file with, and the checks that turn a
//! tensor-table entry into a `TensorInfo` whose bytes lie inside the file.

use std::path::Path;

use super::{MetaValue, TensorInfo, MAX_ARRAY_DEPTH, MAX_DIMS};
use crate::model::quant::GgmlType;
use crate::model::ModelError;

/// A tensor-table entry as read, before its bounds are checked against the data section.
pub(super) struct RawTensorInfo {
    pub(super) name: String,
    pub(super) dims: Vec<usize>,
    pub(super) type_id: u32,
    pub(super) offset: u64,
}

pub(super) fn check_tensor(
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
    // With a zero dimension the byte size is 0 whatever the others are, but `n_rows` and
    // `n_elements` multiply them out: their product, zeros left out, must fit too.
    if raw.dims.iter().filter(|&&d| d != 0).try_fold(1usize, |acc, &d| acc.checked_mul(d)).is_none() {
        return Err(reader.invalid(format!("tensor `{name}`: dims {:?} overflow", raw.dims)));
    }
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
pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
    pub(super) path: &'a Path,
}

impl<'a> Reader<'a> {
    pub(super) fn invalid(&self, message: impl Into<String>) -> ModelError {
        ModelError::invalid(self.path, message)
    }

    pub(super) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(super) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ModelError> {
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

    pub(super) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], ModelError> {
        let slice = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(super) fn u64(&mut self, what: &str) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A u64 count of items that each take at least `min_item_bytes`; a count the rest of the
    /// file cannot hold is rejected before anything is allocated for it.
    pub(super) fn count(&mut self, what: &str, min_item_bytes: usize) -> Result<usize, ModelError> {
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

    pub(super) fn string(&mut self, what: &str) -> Result<String, ModelError> {
        let len = self.count(&format!("length of {what}"), 1)?;
        let start = self.pos;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.invalid(format!("{what} at byte {start} is not valid UTF-8")))
    }

    pub(super) fn value(&mut self, value_type: u32, key: &str, depth: usize) -> Result<MetaValue, ModelError> {
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

    pub(super) fn tensor_info(&mut self) -> Result<RawTensorInfo, ModelError> {
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
