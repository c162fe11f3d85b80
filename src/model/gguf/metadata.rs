//! Typed access to a GGUF file's metadata: each getter says `Ok(None)` for an absent key and
//! names the key, the wanted type and the found one when a value has another type.

use super::{GgufFile, MetaValue};
use crate::model::ModelError;

impl GgufFile {
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

    /// An array of floats (f32, or f64 narrowed to f32): SentencePiece token scores.
    pub fn get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>, ModelError> {
        let Some(items) = self.get_array(key)? else { return Ok(None) };
        items
            .iter()
            .map(|item| match item {
                MetaValue::F32(v) => Ok(*v),
                MetaValue::F64(v) => Ok(*v as f32),
                other => Err(self.wrong_type(key, "an array of floats", other)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    // ---- tensors ----
}
