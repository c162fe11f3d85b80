//! Entry points for the coverage-guided fuzz targets in `fuzz/` (run by `tools/fuzz`; see
//! docs/reliability.md): one function per parser of outside bytes. Each feeds the parser arbitrary
//! bytes and asserts what must hold for every input (a round trip, agreement between two paths),
//! not only that nothing panics, and returns whether the parser accepted the input. Nothing in kiln
//! calls these; they live in the library because most of the parsers are crate-private.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::Value;

use crate::engine::json_schema::{CompiledSchema, SchemaAutomaton, SchemaConstraint, TokenTrie};
use crate::engine::request::TokenConstraint;
use crate::model::gguf::writer::{self, GgufWriter};
use crate::model::gguf::{GgufFile, MetaValue};
use crate::model::quant::GgmlType;
use crate::model::safetensors_dir::{SafetensorsDir, WeightDtype};
use crate::server::api::error::ApiError;
use crate::server::api::limits::{MAX_LOGIT_BIAS, MAX_LOGIT_BIAS_VALUE};
use crate::server::api::valid::{PromptInput, ValidGeneration};
use crate::server::api::{native, openai};
use crate::server::http::chunked::ChunkedDecoder;
use crate::server::http::head::{parse_head, BodyFraming, ParsedHead};
use crate::server::http::{HttpConfig, Version};
use crate::server::webhook::{WebhookError, WebhookPolicy};
use crate::server::webhook_destination::is_internal;
use crate::tokenizer::tool_calls::{self, ToolCallFormat, ToolCallStream};
use crate::tokenizer::{ChatMessage, IncrementalDecoder, Tokenizer, TokenizerError};

/// A target's check of one input; true when the parser accepted it.
pub type Target = fn(&[u8]) -> bool;

/// Every target, by the name of its file in `fuzz/fuzz_targets/`.
pub const TARGETS: [(&str, Target); 12] = [
    ("http_head", http_head),
    ("http_chunked", http_chunked),
    ("openai_chat_body", openai_chat_body),
    ("openai_completion_body", openai_completion_body),
    ("native_body", native_body),
    ("chat_template", chat_template),
    ("gguf_reader", gguf_reader),
    ("safetensors_reader", safetensors_reader),
    ("tokenizer_decode", tokenizer_decode),
    ("webhook_url", webhook_url),
    ("json_schema", json_schema),
    ("tool_call_output", tool_call_output),
];

// ---- HTTP ----

/// The request head: framing follows the smuggling rules, the head's own bytes decide it, and the
/// parsed fields written out again frame the same way.
pub fn http_head(data: &[u8]) -> bool {
    let max_headers = HttpConfig::default().max_headers;
    let Ok(Some(head)) = parse_head(data, max_headers) else { return false };
    assert!(head.len >= 1 && head.len <= data.len(), "head length {} of {} bytes", head.len, data.len());
    // Whatever follows the head (a body, the next request) cannot have completed it.
    assert!(matches!(parse_head(&data[..head.len - 1], max_headers), Ok(None)), "a strict prefix is a complete head");
    let has = |name: &str| head.headers.get(name).is_some();
    match head.framing {
        BodyFraming::Chunked => assert!(head.version == Version::Http11 && !has("content-length")),
        BodyFraming::Length(len) => assert!(len > 0 && !has("transfer-encoding")),
        BodyFraming::Empty => assert!(!has("transfer-encoding")),
    }
    assert!(!(head.keep_alive && head.headers.has_token("connection", "close")));
    let again = parse_head(&write_head(&head), max_headers)
        .unwrap_or_else(|e| panic!("the written-out head of {head:?} is refused: {e}"))
        .expect("a written-out head is complete");
    assert_eq!(summary(&again), summary(&head), "writing the head out changed its meaning");
    true
}

fn write_head(head: &ParsedHead) -> Vec<u8> {
    let query = head.query.as_ref().map(|q| format!("?{q}")).unwrap_or_default();
    let version = if head.version == Version::Http10 { "1.0" } else { "1.1" };
    let mut text = format!("{} {}{query} HTTP/{version}\r\n", head.method, head.path);
    for (name, value) in head.headers.iter() {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

/// Everything of a head but its length in bytes.
fn summary(head: &ParsedHead) -> impl PartialEq + std::fmt::Debug + '_ {
    let fields = (&head.method, &head.path, &head.query, head.version, &head.headers);
    (fields, head.framing, head.keep_alive, head.expect_continue)
}

/// Limits small enough that fuzz inputs (a few KiB) reach them.
const CHUNKED_MAX_BODY: usize = 1024;
const CHUNKED_MAX_TRAILER: usize = 256;

/// A chunked body: decoding in two reads (split where the first byte says) agrees with one read,
/// and the rest of the input, encoded as a chunked body, decodes back to itself.
pub fn http_chunked(data: &[u8]) -> bool {
    let Some((&split, input)) = data.split_first() else { return false };
    let mut whole_body = Vec::new();
    let whole = decode_in_reads(input, &[input.len()], &mut whole_body);
    let mut split_body = Vec::new();
    let at = usize::from(split) % (input.len() + 1);
    let split = decode_in_reads(input, &[at, input.len()], &mut split_body);
    assert_eq!(whole, split, "one read and two reads split at {at} disagree");
    if whole.is_ok() {
        assert_eq!(whole_body, split_body, "one read and two reads split at {at} decode different bodies");
    }

    let encoded = encode_chunked(input, data[0]);
    let next_request = b"GET / HTTP/1.1\r\n\r\n";
    let mut decoder = ChunkedDecoder::new(input.len(), CHUNKED_MAX_TRAILER);
    let mut body = Vec::new();
    let (used, done) = decoder
        .decode(&[&encoded[..], next_request].concat(), &mut body)
        .unwrap_or_else(|e| panic!("our own encoding {:?} is refused: {e}", String::from_utf8_lossy(&encoded)));
    assert!(done && used == encoded.len(), "the decoder stopped at {used} of {} (done: {done})", encoded.len());
    assert_eq!(body, input, "an encoded body did not decode to itself");
    matches!(whole, Ok((_, true)))
}

/// Feeds `input` as a connection would: what has arrived by each of `arrived` (increasing byte
/// counts), with unused bytes offered again. Returns the bytes used and whether the body ended.
fn decode_in_reads(
    input: &[u8],
    arrived: &[usize],
    body: &mut Vec<u8>,
) -> Result<(usize, bool), crate::server::http::chunked::ChunkError> {
    let mut decoder = ChunkedDecoder::new(CHUNKED_MAX_BODY, CHUNKED_MAX_TRAILER);
    let mut used = 0;
    for &end in arrived {
        let (n, done) = decoder.decode(&input[used..end], body)?;
        used += n;
        if done {
            return Ok((used, true));
        }
    }
    Ok((used, false))
}

/// Chunk sizes, hex case, extensions and trailers vary with `seed`, as senders' do.
fn encode_chunked(body: &[u8], seed: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut i = usize::from(seed);
    while !rest.is_empty() {
        let len = (1 + i * 7 % 40).min(rest.len());
        let size = if i.is_multiple_of(2) { format!("{len:x}") } else { format!("{len:X}") };
        let zeros = if i.is_multiple_of(5) { "00" } else { "" };
        let extension = if i.is_multiple_of(3) { ";name=\"value\"" } else { "" };
        out.extend_from_slice(format!("{zeros}{size}{extension}\r\n").as_bytes());
        out.extend_from_slice(&rest[..len]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[len..];
        i += 1;
    }
    out.extend_from_slice(if seed.is_multiple_of(2) { b"0\r\n\r\n" } else { b"0\r\nX-Trailer: yes\r\n\r\n" });
    out
}

// ---- API bodies ----

/// `POST /v1/chat/completions`: a validated request keeps every range, an error is a 400 in
/// OpenAI's shape, and only the JSON value counts, not how it is spelled.
pub fn openai_chat_body(data: &[u8]) -> bool {
    let parsed = openai::parse_chat(data);
    if let Ok(valid) = &parsed {
        let PromptInput::Chat(messages) = &valid.prompt else { panic!("a chat request without messages") };
        assert!(!messages.is_empty());
        assert!(messages.iter().all(|m| matches!(m.role.as_str(), "system" | "user" | "assistant")), "{messages:?}");
        assert!(valid.logprobs.is_none_or(|k| k as u64 <= openai::MAX_TOP_LOGPROBS));
        check_generation(valid, openai::MAX_N as usize, 2.0);
    }
    check_respelled(data, &parsed, openai::parse_chat);
    check_error(parsed)
}

/// `POST /v1/completions`, with the same checks as chat.
pub fn openai_completion_body(data: &[u8]) -> bool {
    let parsed = openai::parse_completion(data);
    if let Ok(valid) = &parsed {
        match &valid.prompt {
            PromptInput::Text(texts) => assert!(!texts.is_empty()),
            PromptInput::Tokens(lists) => assert!(!lists.is_empty()),
            PromptInput::Chat(_) => panic!("a completion request became a chat"),
        }
        assert!(valid.max_tokens.is_some() && !(valid.echo && valid.stream));
        assert!(valid.logprobs.is_none_or(|k| k <= 5));
        check_generation(valid, openai::MAX_N as usize, 2.0);
    }
    check_respelled(data, &parsed, openai::parse_completion);
    check_error(parsed)
}

/// `POST /v1/inference/{model}` (the native API), with the same checks.
pub fn native_body(data: &[u8]) -> bool {
    let parse = |body: &[u8]| native::parse_native(body).map(|r| (r.generation, r.webhook));
    let parsed = parse(data);
    if let Ok((valid, webhook)) = &parsed {
        assert!(matches!(&valid.prompt, PromptInput::Text(texts) if texts.len() == 1));
        assert!(valid.max_tokens.is_some_and(|m| (1..=100_000).contains(&m)));
        assert!(!(valid.stream && (valid.n > 1 || webhook.is_some())));
        check_generation(valid, 2, 100.0);
    }
    check_respelled(data, &parsed, parse);
    check_error(parsed)
}

/// The ranges every endpoint promises the engine.
fn check_generation(valid: &ValidGeneration, max_n: usize, max_temperature: f32) {
    let s = &valid.sampling;
    let ok = (1..=max_n).contains(&valid.n)
        && valid.stop.len() <= openai::MAX_STOP_SEQUENCES
        && valid.stop.iter().all(|stop| !stop.is_empty())
        && valid.max_tokens.is_none_or(|m| m >= 1)
        && (valid.stream || !valid.include_usage)
        && (0.0..=max_temperature).contains(&s.temperature)
        && s.top_p > 0.0
        && s.top_p <= 1.0
        && (0.0..=1.0).contains(&s.min_p)
        && s.top_k <= 100_000
        && (0.01..=5.0).contains(&s.repetition_penalty)
        && (-2.0..=2.0).contains(&s.presence_penalty)
        && (-2.0..=2.0).contains(&s.frequency_penalty)
        && s.logit_bias.len() <= MAX_LOGIT_BIAS
        && s.logit_bias.windows(2).all(|pair| pair[0].0 < pair[1].0)
        && s.logit_bias.iter().all(|(_, bias)| bias.abs() <= MAX_LOGIT_BIAS_VALUE);
    assert!(ok, "a validated request is out of range: {valid:?}");
}

/// A refused body is a client error: 400, OpenAI's error type, a message to read.
fn check_error<T>(parsed: Result<T, ApiError>) -> bool {
    match parsed {
        Ok(_) => true,
        Err(err) => {
            assert!(err.status == 400 && err.kind == "invalid_request_error" && !err.message.is_empty(), "{err:?}");
            false
        }
    }
}

/// The same JSON value written another way (pretty, duplicate keys resolved) parses the same.
fn check_respelled<T: PartialEq + std::fmt::Debug>(
    data: &[u8],
    parsed: &Result<T, ApiError>,
    parse: impl Fn(&[u8]) -> Result<T, ApiError>,
) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let respelled = serde_json::to_vec_pretty(&value).expect("a parsed JSON value serializes");
    match (parsed, &parse(&respelled)) {
        (Ok(first), Ok(again)) => assert_eq!(first, again, "respelling the body changed the request"),
        (Err(first), Err(again)) => assert_eq!(first.param, again.param, "respelling the body changed the error"),
        (first, again) => panic!("respelling the body changed the outcome: {first:?} then {again:?}"),
    }
}

// ---- Tokenizer ----

/// Byte-level BPE (the default model) and SentencePiece with byte fallback (the Llama-2 fixture
/// that tools/fetch-test-data builds): the two decoder families kiln implements.
fn tokenizers() -> &'static [Tokenizer; 2] {
    static TOKENIZERS: OnceLock<[Tokenizer; 2]> = OnceLock::new();
    TOKENIZERS.get_or_init(|| {
        let smollm2 = crate::model::pull::pull_default_model().expect("the default model (kiln pull)");
        let llama2 = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/cache/llama2");
        let load = |dir: &Path| {
            Tokenizer::from_dir(dir).unwrap_or_else(|e| panic!("{e} (tools/fetch-test-data makes the Llama-2 one)"))
        };
        [load(&smollm2), load(&llama2)]
    })
}

const SMOLLM2: usize = 0;

/// Which bytes the default model's vocabulary has a single-byte token for.
fn smollm2_byte_tokens() -> &'static [bool; 256] {
    static COVERED: OnceLock<[bool; 256]> = OnceLock::new();
    COVERED.get_or_init(|| {
        let mut covered = [false; 256];
        for bytes in tokenizers()[SMOLLM2].all_token_bytes() {
            if let [byte] = bytes[..] {
                covered[usize::from(byte)] = true;
            }
        }
        covered
    })
}
const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// Chat messages into the model's template and the prompt into ids, as a chat request goes: the
/// template renders or raises its own exception, and byte-level BPE gives each message back.
/// Input: a byte choosing the tokenizer and `add_generation_prompt`, then messages separated by
/// NUL, each a role byte (1 user, 2 assistant, 3 system, modulo 3) and its content.
pub fn chat_template(data: &[u8]) -> bool {
    let Some((&choice, rest)) = data.split_first() else { return false };
    let which = usize::from(choice) % 2;
    let tokenizer = &tokenizers()[which];
    let messages: Vec<ChatMessage> = rest
        .split(|&b| b == 0)
        .map(|piece| match piece.split_first() {
            Some((&role, content)) => ChatMessage::new(ROLES[usize::from(role) % 3], String::from_utf8_lossy(content)),
            None => ChatMessage::new("user", ""),
        })
        .collect();
    let prompt = match tokenizer.apply_chat_template(&messages, choice & 2 != 0) {
        Ok(prompt) => prompt,
        // The template refusing the conversation (Llama 2's alternating roles) is a 400.
        Err(TokenizerError::ChatTemplate(_)) => return false,
        Err(other) => panic!("rendering {messages:?} failed: {other}"),
    };
    let ids = tokenizer.encode(&prompt, false).expect("a rendered prompt encodes");
    assert!(ids.iter().all(|&id| (id as usize) < tokenizer.vocab_size()));
    if which == SMOLLM2 {
        for message in &messages {
            assert!(prompt.contains(&message.content), "ChatML lost {:?}", message.content);
            // Byte-level BPE loses nothing but special tokens spelled out in the text and bytes
            // the vocabulary has no token for (SmolLM2 lacks 21, e.g. 0x04; HF drops them too).
            let ids = tokenizer.encode(&message.content, false).expect("text encodes");
            let covered = message.content.bytes().all(|b| smollm2_byte_tokens()[usize::from(b)]);
            if covered && !ids.iter().any(|&id| tokenizer.is_special(id)) {
                assert_eq!(tokenizer.decode(&ids), message.content, "decode(encode(text)) != text");
            }
        }
    }
    true
}

/// Arbitrary ids to text: the streaming decoder gives exactly what a one-shot decode does, and a
/// decoder continuing a prompt gives what decoding prompt and ids together adds to the prompt.
/// Input: a byte choosing the tokenizer and the id width, then the ids.
pub fn tokenizer_decode(data: &[u8]) -> bool {
    let Some((&choice, rest)) = data.split_first() else { return false };
    let tokenizer = &tokenizers()[usize::from(choice) % 2];
    // Mostly ids of the vocabulary and a few past it; or any u32, as a token-id prompt may hold.
    let in_vocab = tokenizer.vocab_size() as u32 + 8;
    let ids: Vec<u32> = if choice & 2 == 0 {
        rest.chunks_exact(2).map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])) % in_vocab).collect()
    } else {
        rest.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    let text = tokenizer.decode(&ids);
    let mut decoder = tokenizer.incremental_decoder();
    assert_eq!(stream(&mut decoder, &ids), text, "streaming and one-shot decodes of {ids:?} differ");

    let prompt = tokenizer.encode("Hi", false).expect("text encodes");
    let prompt_text = tokenizer.decode(&prompt);
    let together = tokenizer.decode(&[&prompt[..], &ids].concat());
    let added = together.strip_prefix(&prompt_text[..]).expect("decoding more ids keeps the prompt's text");
    assert_eq!(stream(&mut IncrementalDecoder::continuing(tokenizer), &ids), added, "continuing {ids:?}");
    true
}

fn stream(decoder: &mut IncrementalDecoder, ids: &[u32]) -> String {
    let mut text = String::new();
    for &id in ids {
        text.push_str(decoder.push(id));
    }
    text.push_str(decoder.finish());
    text
}

// ---- Model files ----

/// A GGUF file: every tensor lies inside the file and dequantizes without a panic, the metadata
/// readers of conversion do not panic, and the file written back out by the writer reads back the
/// same (metadata, tensor table and bytes).
pub fn gguf_reader(data: &[u8]) -> bool {
    let Ok(file) = GgufFile::from_bytes(Path::new("fuzz.gguf"), data.to_vec()) else { return false };
    for info in file.tensors() {
        let range = file.tensor_file_range(info);
        assert!(range.start >= file.data_offset() && range.end <= data.len(), "{info:?} lies outside the file");
        assert!(info.row_bytes() * info.n_rows() == info.n_bytes() || info.n_elements() == 0, "{info:?}");
        if info.ggml_type.can_dequantize() {
            file.dequantize(info).unwrap_or_else(|e| panic!("{info:?} is in bounds but does not dequantize: {e}"));
        }
    }
    let _ = crate::model::convert::config_from_gguf(&file);
    let _ = crate::model::gguf_tokenizer::tokenizer_files_from_gguf(&file, 2048);

    // The writer pads the data section to the alignment: a valid 1 GiB alignment (found by this
    // target) would make the copy a gigabyte of padding, which says nothing about the reader.
    if file.alignment() > MAX_REWRITTEN_ALIGNMENT {
        return true;
    }
    let written = rewrite_gguf(&file);
    let again = GgufFile::from_bytes(Path::new("rewritten.gguf"), written.clone())
        .unwrap_or_else(|e| panic!("the writer's copy of a valid file is refused: {e}"));
    assert_eq!(rewrite_gguf(&again), written, "the writer's copy reads back different");
    true
}

/// Largest alignment whose file `gguf_reader` writes out again.
const MAX_REWRITTEN_ALIGNMENT: usize = 1 << 16;

/// The file as the writer lays it out: keys sorted, tensors packed in table order.
fn rewrite_gguf(file: &GgufFile) -> Vec<u8> {
    let metadata: BTreeMap<&String, &MetaValue> = file.metadata().iter().collect();
    let mut out = GgufWriter::new();
    out.version = file.version();
    out.alignment = file.alignment();
    for (key, value) in metadata {
        out = out.kv(key, value.clone());
    }
    for info in file.tensors() {
        let dims: Vec<u64> = info.dims.iter().map(|&d| d as u64).collect();
        out = out.tensor(&info.name, &dims, ggml_type_id(info.ggml_type), file.tensor_data(info).to_vec());
    }
    out.to_bytes()
}

fn ggml_type_id(ggml_type: GgmlType) -> u32 {
    (0..64).find(|&id| GgmlType::from_id(id) == Some(ggml_type)).expect("every GgmlType has an id")
}

/// A safetensors file: every tensor's bytes match its shape and dtype, and the file written again
/// by the safetensors writer reads back the same.
pub fn safetensors_reader(data: &[u8]) -> bool {
    let path = Path::new("fuzz.safetensors");
    let Ok(tensors) = SafetensorsDir::from_file_bytes(path, Arc::new(data.to_vec())) else { return false };
    let mut names: Vec<&str> = tensors.names().collect();
    names.sort_unstable();
    let mut views = Vec::new();
    for &name in &names {
        let tensor = tensors.get(name).expect("a listed name");
        let elements = tensor.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let expected = elements.and_then(|n| n.checked_mul(tensor.dtype.size_bytes()));
        assert_eq!(Some(tensor.bytes().len()), expected, "`{name}` of shape {:?}", tensor.shape);
        let dtype = match tensor.dtype {
            WeightDtype::F32 => safetensors::Dtype::F32,
            WeightDtype::F16 => safetensors::Dtype::F16,
            WeightDtype::Bf16 => safetensors::Dtype::BF16,
        };
        let view = safetensors::tensor::TensorView::new(dtype, tensor.shape.clone(), tensor.bytes())
            .expect("a tensor read from a file is a valid view");
        views.push((name, view));
    }
    let written = safetensors::serialize(views, None).expect("read tensors write out");
    let again = SafetensorsDir::from_file_bytes(path, Arc::new(written)).expect("the written copy reads back");
    let mut names_again: Vec<&str> = again.names().collect();
    names_again.sort_unstable();
    assert_eq!(names_again, names);
    for name in names {
        let (first, second) = (tensors.get(name).expect("listed"), again.get(name).expect("listed"));
        assert!(first.dtype == second.dtype && first.shape == second.shape && first.bytes() == second.bytes());
    }
    true
}

// ---- Webhook URL ----

/// The native API's `webhook` URL: what the parser accepts can go into a request line and a Host
/// header unchanged, the parts written back as a URL parse to the same target, and the request-time
/// check (nothing allowed) refuses exactly the internal addresses written in a URL.
pub fn webhook_url(data: &[u8]) -> bool {
    let Ok(url) = std::str::from_utf8(data) else { return false };
    let checked = WebhookPolicy::default().check(url);
    let Ok(target) = crate::server::webhook::parse_http_url(url) else {
        assert!(checked.is_err(), "{url:?} is not a URL but passed the check");
        return false;
    };
    let literal = target.host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>();
    match (literal, &checked) {
        (Ok(address), Err(WebhookError::HostNotAllowed(_))) if is_internal(address) => {}
        (Ok(address), Ok(checked)) if !is_internal(address) => assert_eq!(checked, &target),
        (Err(_), Ok(checked)) => assert_eq!(checked, &target),
        (literal, checked) => panic!("{url:?}: address {literal:?} was checked as {checked:?}"),
    }
    assert!(!target.host.is_empty() && target.path.starts_with('/'), "{url:?} gave {target:?}");
    for part in [&target.host, &target.path] {
        assert!(!part.chars().any(|c| c.is_whitespace() || c.is_control()), "{url:?} gave {target:?}");
    }
    assert!(!target.host.contains(['/', '@', '?', '#']), "{url:?} gave {target:?}");
    let written = format!("http://{}:{}{}", target.host, target.port, target.path);
    let again = crate::server::webhook::parse_http_url(&written);
    assert_eq!(again.as_ref(), Ok(&target), "{url:?} gave {target:?}, written out as {written:?}");
    true
}

// ---- Structured outputs and tool calls ----

/// A client's JSON Schema (`response_format`, a tool's `parameters`): compiling never panics, and
/// over a byte-level vocabulary a walk from the input's own bytes as choices never meets a state
/// that allows nothing (an output with no way on), and every output it completes is JSON.
pub fn json_schema(data: &[u8]) -> bool {
    // The schema, then the walk's choices after a NUL.
    let (schema_bytes, choices) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(schema) = serde_json::from_slice::<Value>(schema_bytes) else { return false };
    let Ok(compiled) = CompiledSchema::compile(&schema) else { return false };
    type ByteVocabulary = (Arc<Vec<Vec<u8>>>, Arc<TokenTrie>);
    static BYTES: OnceLock<ByteVocabulary> = OnceLock::new();
    let (bytes, trie) = BYTES.get_or_init(|| {
        let bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let trie = Arc::new(TokenTrie::new(&bytes));
        (Arc::new(bytes), trie)
    });
    let automaton = Arc::new(SchemaAutomaton::new(Arc::new(compiled), trie.clone()));
    let mut constraint = SchemaConstraint::new(automaton, bytes.clone());
    let mut output = Vec::new();
    for &choice in choices.iter().take(512) {
        if constraint.is_complete() {
            break;
        }
        let mut mask = [0u32; 8];
        constraint.allowed_tokens(&mut mask);
        let allowed: Vec<u8> = (0..=255u8).filter(|&b| mask[b as usize / 32] >> (b % 32) & 1 == 1).collect();
        assert!(!allowed.is_empty(), "{schema}: nothing may follow {:?}", String::from_utf8_lossy(&output));
        let byte = allowed[choice as usize % allowed.len()];
        assert!(constraint.accept(byte as u32));
        output.push(byte);
    }
    if constraint.is_complete() {
        let parsed = serde_json::from_slice::<Value>(&output);
        assert!(parsed.is_ok(), "{schema}: {:?} is complete but not JSON", String::from_utf8_lossy(&output));
    }
    true
}

/// A model's reply read for tool calls in each format: the calls and content do not depend on
/// how the reply streams in (split where the input's first byte says), and every call's arguments
/// are a JSON object.
pub fn tool_call_output(data: &[u8]) -> bool {
    let Some((&split, rest)) = data.split_first() else { return false };
    let Ok(text) = std::str::from_utf8(rest) else { return false };
    let mut called = false;
    for format in ToolCallFormat::ALL {
        let whole = tool_calls::parse(format, text);
        let mut stream = ToolCallStream::new(format);
        let mut events = Vec::new();
        let mut at = 0;
        let step = usize::from(split).max(1);
        while at < text.len() {
            let mut end = (at + step).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            events.extend(stream.push(&text[at..end]));
            at = end;
        }
        events.extend(stream.finish());
        assert_eq!(tool_calls::ParsedOutput::from_events(events), whole, "{format:?} split every {step} bytes");
        for call in &whole.tool_calls {
            let arguments = serde_json::from_str::<Value>(&call.arguments);
            assert!(arguments.is_ok_and(|a| a.is_object()), "{format:?}: arguments {:?}", call.arguments);
            assert!(!call.name.is_empty());
        }
        called |= !whole.tool_calls.is_empty();
    }
    called
}

// ---- Seeds ----

/// Starting inputs the fuzzer mutates, one list per target; binary formats come from kiln's own
/// writers so they stay valid as the formats grow.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let text = |items: &[&str]| items.iter().map(|s| s.as_bytes().to_vec()).collect();
    match target {
        "http_head" => text(&[
            "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nExpect: 100-continue\r\n\r\n",
            "GET http://h:80/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close, upgrade\r\n\r\nNEXT",
        ]),
        "http_chunked" => {
            let mut seeds: Vec<Vec<u8>> = text(&[
                "\x034;a=b\r\nWiki\r\n5 \r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\nNEXT",
            ]);
            seeds.push([&[7u8][..], &encode_chunked(b"hello, chunked world", 7)].concat());
            seeds
        }
        "openai_chat_body" => text(&[
            r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi"}]}],"max_tokens":5,"temperature":0.5,"stop":["\n"],"n":2}"#,
            r#"{"messages":[{"role":"developer","content":"x"}],"logprobs":true,"top_logprobs":3,"stream":true,"stream_options":{"include_usage":true},"response_format":{"type":"json_object"},"seed":-1}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"logit_bias":{"50256":-100,"7":2.5},"ignore_eos":true,"user":"u","tool_choice":"none"}"#,
        ]),
        "openai_completion_body" => text(&[
            r#"{"prompt":"Once","logprobs":2,"echo":true,"max_tokens":5.0,"top_k":40,"min_p":0.1}"#,
            r#"{"prompt":[[1,2],[3]],"stop":"x","presence_penalty":-1,"frequency_penalty":1,"repetition_penalty":1.1}"#,
        ]),
        "native_body" => text(&[
            r#"{"input":"Hello","max_new_tokens":20,"temperature":50,"num_responses":2,"webhook":"http://h:9000/done"}"#,
            r#"{"input":"Hi","stream":true,"top_p":0.5,"stop":["a","b"],"response_format":{"type":"text"}}"#,
        ]),
        "chat_template" => text(&[
            "\x02\x03You are terse.\x00\x01What is 2+2?\x00\x024\x00\x01And 3+3?",
            "\x03\x01Hello <|im_end|> <s> [INST] caf\u{e9} \u{1F600}",
        ]),
        "tokenizer_decode" => {
            vec![[0u8, 1, 0, 200, 0, 255, 127].to_vec(), [2u8, 0, 0, 0, 0, 255, 255, 255, 255, 60, 0, 0, 0].to_vec()]
        }
        "gguf_reader" => vec![gguf_seed(3, 32), gguf_seed(2, 64)],
        "safetensors_reader" => vec![safetensors_seed()],
        "webhook_url" => text(&[
            "http://hooks.example/a?b=1#f",
            "http://[::1]:9000/x",
            "http://169.254.169.254/latest",
            "http://[::ffff:10.0.0.1]:80",
            "http://93.184.215.14:8080?q",
        ]),
        "json_schema" => text(&[
            "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"enum\":[\"x\",null]}},\"required\":[\"a\"]}\0\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14",
            "{\"type\":\"array\",\"items\":{\"type\":\"string\",\"pattern\":\"^[a-c]{1,3}$\"},\"maxItems\":2}\0abcdefghijklmnopqrstuvwxyz",
            "{\"$defs\":{\"n\":{\"anyOf\":[{\"type\":\"null\"},{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/n\"}}]}},\"$ref\":\"#/$defs/n\"}\0zzzzzzzzzzzz",
            "{\"type\":\"string\",\"format\":\"date-time\"}\0\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}",
            "{\"type\":\"number\"}\0\u{7f}\u{7f}\u{7f}",
        ]),
        "tool_call_output" => text(&[
            "\u{3}Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            "\u{5}<tool_call>{\"name\":\"a\",\"arguments\":\"{\\\"x\\\": 1}\"}</tool_call><tool_call>{\"name\":\"b\",\"arguments\":{}}</tool_call>",
            "\u{2}<|python_tag|>{\"name\": \"f\", \"parameters\": {\"q\": [1, 2]}}; {\"name\": \"g\", \"parameters\": {}}",
            "\u{1}{\"name\": \"f\", \"parameters\": {\"s\": \"\u{e9}\\\"\"}}",
        ]),
        _ => Vec::new(),
    }
}

/// Writes `seeds(target)` into the directory named by `KILN_FUZZ_SEEDS` (tools/fuzz sets it to
/// the target's corpus), keeping files already there. Called from each target's init.
pub fn write_seeds(target: &str) {
    let Some(dir) = std::env::var_os("KILN_FUZZ_SEEDS") else { return };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for (i, seed) in seeds(target).iter().enumerate() {
        let path = dir.join(format!("seed-{i}"));
        if !path.exists() {
            std::fs::write(&path, seed).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}

/// A tiny Llama with every metadata type, a GPT-2 style vocabulary and one tensor of each type
/// kiln dequantizes.
fn gguf_seed(version: u32, alignment: u32) -> Vec<u8> {
    let mut file = GgufWriter::new()
        .kv("general.architecture", writer::string("llama"))
        .kv("llama.embedding_length", MetaValue::U32(8))
        .kv("llama.feed_forward_length", MetaValue::U64(16))
        .kv("llama.block_count", MetaValue::I32(1))
        .kv("llama.attention.head_count", MetaValue::U16(2))
        .kv("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(1e-5))
        .kv("llama.rope.freq_base", MetaValue::F64(1e4))
        .kv("tokenizer.ggml.model", writer::string("gpt2"))
        .kv("tokenizer.ggml.tokens", writer::strings(&["a", "b", "ab", "<s>"]))
        .kv("tokenizer.ggml.merges", writer::strings(&["a b"]))
        .kv("tokenizer.ggml.token_type", MetaValue::Array(vec![MetaValue::I32(1); 4]))
        .kv("tokenizer.ggml.bos_token_id", MetaValue::U32(3))
        .kv("general.flags", MetaValue::Array(vec![MetaValue::Bool(true), MetaValue::Bool(false)]))
        .kv("general.nested", MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::U8(1), MetaValue::U8(2)])]))
        .kv("general.small", MetaValue::Array(vec![MetaValue::I8(-1), MetaValue::I8(1)]))
        .kv("general.wide", MetaValue::Array(vec![MetaValue::I16(-2), MetaValue::I16(2)]))
        .kv("general.big", MetaValue::I64(-3))
        .f32_tensor("token_embd.weight", &[8, 4], &[0.5; 32])
        .f32_tensor("blk.0.ffn_gate_exps.weight", &[2, 1, 2, 1], &[0.25; 4])
        .tensor("blk.0.attn_norm.weight", &[8], 1, [0x00, 0x3c].repeat(8))
        .tensor("blk.0.attn_q.weight", &[32, 1], 8, [&[0x00, 0x3c][..], &[1; 32]].concat())
        .tensor("blk.0.attn_k.weight", &[32, 1], 2, [&[0x00, 0x3c][..], &[0x21; 16]].concat())
        .tensor("blk.0.attn_v.weight", &[32, 1], 3, [&[0x00, 0x3c, 0x00, 0xbc][..], &[0x43; 16]].concat());
    file.version = version;
    if alignment != 32 {
        file = file.kv("general.alignment", MetaValue::U32(alignment));
        file.alignment = alignment as usize;
    }
    file.to_bytes()
}

fn safetensors_seed() -> Vec<u8> {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let f32_bytes: Vec<u8> = [1.0f32, -2.0, 0.5, 3.0, 0.0, 1e-3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let half_bytes = [0x00u8, 0x3c, 0x00, 0xbc, 0x80, 0x3f, 0x00, 0x00];
    let views = [
        ("model.embed_tokens.weight", TensorView::new(Dtype::F32, vec![2, 3], &f32_bytes)),
        ("model.norm.weight", TensorView::new(Dtype::F16, vec![4], &half_bytes)),
        ("lm_head.weight", TensorView::new(Dtype::BF16, vec![2, 2], &half_bytes)),
    ];
    let views = views.into_iter().map(|(name, view)| (name, view.expect("a consistent seed tensor")));
    safetensors::serialize(views, None).expect("seed tensors serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeds run through the same checks as fuzz inputs, and each target has seeds the parser
    /// accepts, or the fuzzer would start where the checks after acceptance are never reached.
    /// The two tokenizer targets need the default model and the Llama-2 fixture, which the
    /// library's unit tests do not fetch: they run in `tools/fuzz` only.
    #[test]
    fn seeds_pass_the_checks_and_some_are_accepted() {
        for (name, target) in TARGETS {
            if matches!(name, "chat_template" | "tokenizer_decode") {
                continue;
            }
            let accepted = seeds(name).iter().filter(|seed| target(seed)).count();
            assert!(accepted > 0, "{name}: no seed is accepted");
        }
    }

    /// The GGUF seeds reach conversion's metadata readers, not only the parser.
    #[test]
    fn gguf_seeds_are_convertible_llamas() {
        for seed in seeds("gguf_reader") {
            let file = GgufFile::from_bytes(Path::new("seed.gguf"), seed).unwrap();
            crate::model::convert::config_from_gguf(&file).unwrap();
            crate::model::gguf_tokenizer::tokenizer_files_from_gguf(&file, 2048).unwrap();
        }
    }

    #[test]
    fn every_target_has_a_fuzz_target_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
        for (name, _) in TARGETS {
            assert!(dir.join(format!("{name}.rs")).is_file(), "fuzz/fuzz_targets/{name}.rs is missing");
        }
    }
}
