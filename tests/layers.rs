//! The imports between `src/` folders run one way, as the README draws them:
//! cli (and start-up) -> server -> engine -> backend -> ops / model / tokenizer, never back up.
//! Reads every `crate::<folder>` path in `src/` (use lines and inline paths, test modules too).

use std::path::{Path, PathBuf};

/// Each top-level module of the library and its layer; a file may name modules of its own layer
/// or below.
const LAYERS: &[(&str, u32)] = &[
    ("ops", 0),
    ("model", 0),
    ("tokenizer", 0),
    ("testing", 0),
    ("backend", 1),
    ("engine", 2),
    ("server", 3),
    ("launch", 4),
    ("cli", 4),
    // The fuzz targets' entry points reach the parsers of every layer below, as the CLI does.
    ("fuzzing", 4),
    ("lib", 5),
    ("main", 5),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(name, _)| *name == module).map(|&(_, rank)| rank)
}

/// The top-level module a source file belongs to: `src/engine/core.rs` -> "engine",
/// `src/launch.rs` -> "launch".
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src/");
    let first = relative.components().next().expect("a path").as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// Every `crate::<module>` a source text names, with its line number.
fn named_modules(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.push((number + 1, name));
            }
            rest = after;
        }
    }
    found
}

/// Where a file names a module above its own layer.
fn violations(module: &str, text: &str) -> Vec<String> {
    let own = layer(module).unwrap_or_else(|| panic!("src/{module} is not in LAYERS: give it a layer"));
    named_modules(text)
        .into_iter()
        .filter_map(|(line, named)| {
            let theirs = layer(&named)?;
            (theirs > own).then(|| format!("line {line}: {module} (layer {own}) uses crate::{named} (layer {theirs})"))
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a readable source folder") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_between_source_folders_run_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 50, "found only {} source files under {}", files.len(), src.display());
    let mut problems = Vec::new();
    let mut references = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        references += named_modules(&text).len();
        let module = module_of(&src, file);
        problems.extend(violations(&module, &text).into_iter().map(|p| format!("{}: {p}", file.display())));
    }
    assert!(references > 100, "only {references} crate:: paths found: is the scan reading the sources?");
    assert!(problems.is_empty(), "imports that run back up:\n{}", problems.join("\n"));
}

#[test]
fn the_check_flags_an_import_that_runs_back_up() {
    assert_eq!(
        violations("backend", "use crate::engine::sampler::SamplingParams;\nuse crate::model::ModelConfig;"),
        vec!["line 1: backend (layer 1) uses crate::engine (layer 2)".to_string()]
    );
    assert!(violations("engine", "let x = crate::backend::KV_BLOCK_SIZE; // crate::server").is_empty());
    assert_eq!(violations("ops", "fn f() { crate::tokenizer::x(); crate::cli::y(); }").len(), 1);
}
