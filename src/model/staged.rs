//! Files and directories written under a temporary name beside where they belong and renamed
//! into place only when complete, so that a reader (another process, a later run) sees a finished
//! entry or none. Whatever is left unrenamed is removed on drop, also when a step fails.

use std::fs;
use std::path::{Path, PathBuf};

use super::ModelError;

pub(crate) struct Staged {
    pub path: PathBuf,
    /// Renamed into place (nothing left to remove).
    placed: bool,
}

impl Staged {
    /// A path for `target`'s file, beside it; the caller creates the file.
    pub fn file_for(target: &Path) -> Staged {
        Staged { path: unique_beside(target), placed: false }
    }

    /// A new empty directory beside `target`, to be filled and then placed there.
    pub fn dir_for(target: &Path) -> Result<Staged, ModelError> {
        let path = unique_beside(target);
        fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).map_err(|e| ModelError::io(&path, e))?;
        fs::create_dir(&path).map_err(|e| ModelError::io(&path, e))?;
        Ok(Staged { path, placed: false })
    }

    /// A working directory under `parent` that is never placed anywhere: removed on drop.
    pub fn scratch_dir(parent: &Path) -> Result<Staged, ModelError> {
        Staged::dir_for(&parent.join("scratch"))
    }

    /// Renames the finished entry to `target`.
    pub fn place(mut self, target: &Path) -> Result<(), std::io::Error> {
        fs::rename(&self.path, target)?;
        self.placed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.placed {
            return;
        }
        let _ = if self.path.is_dir() { fs::remove_dir_all(&self.path) } else { fs::remove_file(&self.path) };
    }
}

/// `.<name>.partial-<pid>-<nanos>` beside `target`: unique per process and call, hidden.
fn unique_beside(target: &Path) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "entry".into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    target.with_file_name(format!(".{name}.partial-{}-{nanos}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unplaced_entry_is_removed_and_a_placed_one_stays() {
        let root = std::env::temp_dir().join(format!("kiln-staged-{}", std::process::id()));
        let target = root.join("model");
        {
            let dir = Staged::dir_for(&target).unwrap();
            fs::write(dir.path.join("config.json"), "{}").unwrap();
            assert!(dir.path.is_dir() && !target.exists());
        }
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0, "a dropped, unplaced directory is removed");
        let dir = Staged::dir_for(&target).unwrap();
        fs::write(dir.path.join("config.json"), "{}").unwrap();
        dir.place(&target).unwrap();
        assert!(target.join("config.json").is_file());
        let file = Staged::file_for(&root.join("weights.bin"));
        fs::write(&file.path, b"partial").unwrap();
        drop(file);
        let scratch = Staged::scratch_dir(&root.join("tmp")).unwrap();
        assert!(scratch.path.starts_with(root.join("tmp")));
        drop(scratch);
        let left: Vec<_> = fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "only the placed model and the tmp folder remain: {left:?}");
        fs::remove_dir_all(&root).unwrap();
    }
}
