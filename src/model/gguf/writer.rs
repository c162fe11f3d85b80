//! A minimal GGUF writer so tests (unit tests, tests/tokenizer_support/llama2_gguf.rs) and the fuzz
//! seeds (src/fuzzing.rs) can build files byte by byte
//! (including broken ones).

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

impl Default for GgufWriter {
    fn default() -> GgufWriter {
        GgufWriter::new()
    }
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
