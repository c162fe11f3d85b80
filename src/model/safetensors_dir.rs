//! The tensors of a Hugging Face model directory: one or more memory-mapped `*.safetensors` files
//! (sharded through `model.safetensors.index.json`), looked up by name without copying.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::ModelError;

/// Element types kiln computes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
}

impl WeightDtype {
    pub fn size_bytes(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::F16 | WeightDtype::Bf16 => 2,
        }
    }
}

/// Bytes that some owner keeps alive: a memory map, or an owned copy when the mapped bytes are
/// not aligned for their element type (old safetensors writers did not pad their headers).
pub type SharedBytes = Arc<dyn WeightBytes>;

/// The owner of a model's bytes.
pub trait WeightBytes: AsRef<[u8]> + Send + Sync {
    /// A hint that `range` has been copied elsewhere and will not be read again soon: a file
    /// mapping lets its pages go (a later read maps them in again from the file); owned memory
    /// keeps its bytes, since other views may still read them.
    fn release(&self, _range: std::ops::Range<usize>) {}
    /// Whether the bytes are a `weight_arena::Arena` (huge-page memory, filled once), so copying
    /// them into one would gain nothing.
    fn in_weight_arena(&self) -> bool {
        false
    }
}

impl WeightBytes for Vec<u8> {}

struct MappedFile(Mmap);

impl AsRef<[u8]> for MappedFile {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl WeightBytes for MappedFile {
    fn release(&self, range: std::ops::Range<usize>) {
        // SAFETY: the map is a read-only file mapping, so dropping its pages loses nothing:
        // any later read faults them in again from the file, with the same contents. (memmap2
        // widens the range to whole pages; that holds for the neighbouring bytes too.)
        let _ = unsafe { self.0.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.len()) };
    }
}

/// Where one tensor's bytes are.
#[derive(Clone)]
pub struct TensorLocation {
    pub dtype: WeightDtype,
    pub shape: Vec<usize>,
    pub file: PathBuf,
    bytes: SharedBytes,
    start: usize,
    end: usize,
}

impl TensorLocation {
    pub fn bytes(&self) -> &[u8] {
        &(*self.bytes).as_ref()[self.start..self.end]
    }

    /// The owner of the bytes and their range, for views that must outlive this lookup.
    pub fn shared_bytes(&self) -> (SharedBytes, std::ops::Range<usize>) {
        (self.bytes.clone(), self.start..self.end)
    }
}

/// All tensors of a model directory, by name.
pub struct SafetensorsDir {
    tensors: HashMap<String, TensorLocation>,
}

impl SafetensorsDir {
    pub fn open(dir: &Path) -> Result<SafetensorsDir, ModelError> {
        let files = weight_files(dir)?;
        let mut tensors = HashMap::new();
        for file in files {
            let handle = File::open(&file).map_err(|e| ModelError::io(&file, e))?;
            // SAFETY: the map is read-only; a model file being rewritten while kiln runs is
            // outside what any inference server can defend against.
            let mmap = unsafe { Mmap::map(&handle) }.map_err(|e| ModelError::io(&file, e))?;
            add_file_tensors(&file, Arc::new(MappedFile(mmap)), &mut tensors)?;
        }
        Ok(SafetensorsDir { tensors })
    }

    /// The tensors of one safetensors file held in memory; `file` only names it in errors. (The
    /// same parse as `open`, without a directory: what the fuzz target feeds.)
    pub(crate) fn from_file_bytes(file: &Path, bytes: SharedBytes) -> Result<SafetensorsDir, ModelError> {
        let mut tensors = HashMap::new();
        add_file_tensors(file, bytes, &mut tensors)?;
        Ok(SafetensorsDir { tensors })
    }

    pub fn get(&self, name: &str) -> Option<&TensorLocation> {
        self.tensors.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}

/// Parses one safetensors file's header and records where each tensor's bytes are.
fn add_file_tensors(
    file: &Path,
    bytes: SharedBytes,
    tensors: &mut HashMap<String, TensorLocation>,
) -> Result<(), ModelError> {
    let parsed = SafeTensors::deserialize((*bytes).as_ref())
        .map_err(|e| ModelError::invalid(file, format!("not a valid safetensors file: {e}")))?;
    let base = (*bytes).as_ref().as_ptr() as usize;
    for (name, view) in parsed.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => WeightDtype::F32,
            Dtype::F16 => WeightDtype::F16,
            Dtype::BF16 => WeightDtype::Bf16,
            other => {
                return Err(ModelError::invalid(
                    file,
                    format!("tensor `{name}` has dtype {other:?}; kiln reads F32, F16 and BF16"),
                ))
            }
        };
        let start = view.data().as_ptr() as usize - base;
        let end = start + view.data().len();
        let location = if start.is_multiple_of(dtype.size_bytes()) {
            TensorLocation {
                dtype,
                shape: view.shape().to_vec(),
                file: file.to_owned(),
                bytes: bytes.clone(),
                start,
                end,
            }
        } else {
            let owned: SharedBytes = Arc::new(view.data().to_vec());
            let len = view.data().len();
            TensorLocation {
                dtype,
                shape: view.shape().to_vec(),
                file: file.to_owned(),
                bytes: owned,
                start: 0,
                end: len,
            }
        };
        tensors.insert(name, location);
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

/// The safetensors files of a model directory: the shards named by the index when there is one,
/// otherwise every `*.safetensors` file.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index_path = dir.join("model.safetensors.index.json");
    let mut files: Vec<PathBuf> = if index_path.exists() {
        let text = std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
        let index: ShardIndex = serde_json::from_str(&text)
            .map_err(|e| ModelError::invalid(&index_path, format!("not a valid shard index: {e}")))?;
        let mut names: Vec<String> = index.weight_map.into_values().collect();
        names.sort();
        names.dedup();
        names.into_iter().map(|name| dir.join(name)).collect()
    } else {
        let entries = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
        let mut found = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| ModelError::io(dir, e))?.path();
            if path.extension().is_some_and(|ext| ext == "safetensors") {
                found.push(path);
            }
        }
        found.sort();
        found
    };
    if files.is_empty() {
        return Err(ModelError::invalid(dir, "no *.safetensors weight files in this model directory"));
    }
    for file in &files {
        if !file.exists() {
            return Err(ModelError::invalid(file, "named in model.safetensors.index.json but missing"));
        }
    }
    files.dedup();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_file_range_reads_back_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.bin");
        let contents: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &contents).unwrap();
        // SAFETY: the file is this test's own and is not changed while mapped.
        let map = unsafe { Mmap::map(&File::open(&path).unwrap()) }.unwrap();
        let bytes: SharedBytes = Arc::new(MappedFile(map));
        assert_eq!((*bytes).as_ref(), &contents[..]);
        bytes.release(100..2 * 4096 + 50);
        assert_eq!((*bytes).as_ref(), &contents[..], "pages come back from the file");
    }
}
