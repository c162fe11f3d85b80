//! Shared by the tokenizer test binaries: the fetched Llama-2 fixture, a tiny byte-level BPE
//! tokenizer written by hand, and a seeded random generator whose seed is printed on failure.
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub mod byte_level_gguf;
pub mod llama2_gguf;

use kiln::tokenizer::Tokenizer;
use serde_json::{json, Value};

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs tools/fetch-test-data once per test binary (it is idempotent and silent when cached) and
/// returns tests/data/cache/llama2/. Needs node and npm, like the script.
pub fn llama2_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = repo_root().join("tools/fetch-test-data");
        let output = Command::new(&script).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            output.status.success(),
            "{} failed ({}):\n{}{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        repo_root().join("tests/data/cache/llama2")
    })
}

pub fn llama2() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| Tokenizer::from_dir(llama2_dir()).expect("the fetched Llama-2 fixture loads"))
}

/// The `tokenizers` crate's own view of the same file: the reference for HF's decode.
pub fn llama2_hf() -> &'static tokenizers::Tokenizer {
    static TOKENIZER: OnceLock<tokenizers::Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| tokenizers::Tokenizer::from_file(llama2_dir().join("tokenizer.json")).expect("loads"))
}

pub fn read_json(relative: &str) -> Value {
    let path = repo_root().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// GPT-2's `bytes_to_unicode`, ported line by line from the Python original (kept apart from
/// kiln's closed-form inverse so that the fixture does not share its bugs).
pub fn gpt2_byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut by_byte = vec!['\0'; 256];
    for (b, c) in bs.into_iter().zip(cs) {
        by_byte[b as usize] = char::from_u32(c).unwrap();
    }
    by_byte
}

pub fn byte_level_string(bytes: &[u8]) -> String {
    let table = gpt2_byte_chars();
    bytes.iter().map(|&b| table[b as usize]).collect()
}

/// Merges of the tiny byte-level tokenizer, as byte strings: a few English pieces and pieces of
/// multi-byte characters, so that characters split across tokens occur in tests.
pub const TINY_MERGES: &[(&[u8], &[u8])] = &[
    (b" ", b"t"),
    (b"h", b"e"),
    (b" t", b"he"),
    (b"l", b"l"),
    (b"he", b"ll"),
    (b"hell", b"o"),
    (b" ", b"w"),
    (&[0xE4], &[0xBD]),             // the first two bytes of 你 (E4 BD A0)
    (&[0xE4, 0xBD], &[0xA0]),       // 你
    (&[0xF0], &[0x9F]),             // the first two bytes of every 4-byte emoji
    (&[0xF0, 0x9F], &[0xA6]),       // three bytes of 🦙 (F0 9F A6 99)
    (&[0xF0, 0x9F, 0xA6], &[0x99]), // 🦙
];

/// Writes a tiny SmolLM2-like byte-level BPE model directory: `<|endoftext|>` 0, `<|im_start|>` 1,
/// `<|im_end|>` 2 (special), the 256 byte tokens, then one token per merge. `tokenizer.json` carries
/// a truncation setting, which kiln must ignore. `config` is written as tokenizer_config.json.
pub fn write_tiny_byte_level(dir: &Path, config: Option<Value>) {
    let table = gpt2_byte_chars();
    let mut vocab = serde_json::Map::new();
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    for (id, token) in specials.iter().enumerate() {
        vocab.insert(token.to_string(), json!(id));
    }
    for (byte, ch) in table.iter().enumerate() {
        vocab.insert(ch.to_string(), json!(specials.len() + byte));
    }
    let mut merges = Vec::new();
    for (left, right) in TINY_MERGES {
        let (l, r) = (byte_level_string(left), byte_level_string(right));
        let merged = format!("{l}{r}");
        let next_id = vocab.len();
        vocab.entry(merged).or_insert(json!(next_id));
        merges.push(format!("{l} {r}"));
    }
    let added: Vec<Value> = specials
        .iter()
        .enumerate()
        .map(|(id, t)| json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0},
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string_pretty(&tokenizer).unwrap()).unwrap();
    if let Some(config) = config {
        std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    }
}

/// SmolLM2-Instruct's special tokens and its ChatML template (from chat_templates.json).
pub fn smollm2_like_config() -> Value {
    let templates = read_json("tests/data/chat_templates.json");
    json!({
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>",
        "chat_template": templates["templates"]["chatml_smollm2"]["template"],
    })
}

/// xorshift64*: small, seedable, good enough to pick ids and characters.
pub struct Rng {
    state: u64,
    seed: u64,
}

impl Rng {
    /// Seeded from KILN_TEST_SEED when set (to replay a failure), else from the clock; tests put
    /// `seed()` in their failure messages.
    pub fn from_env() -> Self {
        let seed = std::env::var("KILN_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        let seed = seed.max(1);
        Rng { state: seed, seed }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Pushes `ids` one at a time; returns every delta and the flushed rest, in order.
pub fn stream(decoder: &mut kiln::tokenizer::IncrementalDecoder, ids: &[u32]) -> Vec<String> {
    let mut deltas: Vec<String> = ids.iter().map(|&id| decoder.push(id).to_owned()).collect();
    deltas.push(decoder.finish().to_owned());
    deltas
}
