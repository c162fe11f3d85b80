//! What each token id contributes to output text, as bytes, read from tokenizer.json's `decoder`.
//!
//! Hugging Face decodes a whole id list through a decoder pipeline. For the two families kiln serves
//! that pipeline reduces to: concatenate one fixed byte string per token, decode the bytes as UTF-8,
//! strip a leading space. Precomputing the byte strings once makes decoding a table lookup per token,
//! lets the streaming decoder work on bytes (no re-decoding a window), and gives a JSON-mode grammar
//! the bytes of every token. The two families:
//! - byte-level BPE (GPT-2, Llama 3, SmolLM2): every character of a token stands for one byte
//!   through the GPT-2 byte table (`ByteLevel` decoder);
//! - SentencePiece-style (Llama 2, Mistral): `▁` stands for a space, `<0xAB>` for the byte 0xAB, and
//!   the first space of the output is stripped (`Replace`, `ByteFallback`, `Fuse`, `Strip`, or a
//!   `Metaspace` decoder).
//!
//! Any other decoder is refused at load time rather than decoded wrongly.

use std::path::Path;

use serde_json::Value;

use super::TokenizerError;

/// Per-id output bytes plus the rules that apply to a whole decoded sequence.
#[derive(Debug)]
pub(crate) struct TokenTable {
    /// `[vocab_size]`: the bytes each token contributes; empty for ids no token has.
    bytes: Vec<Vec<u8>>,
    /// `[vocab_size]`: skipped when decoding (special added tokens and the configured specials).
    special: Vec<bool>,
    /// `[vocab_size]`: false for ids that no token has; HF's decode drops them silently.
    exists: Vec<bool>,
    /// A `Metaspace` decoder drops the replacement characters of the first decoded token instead of
    /// turning them into spaces; those first-position bytes, by id, when that decoder is in use.
    first_token_bytes: Option<Vec<Vec<u8>>>,
    /// The `Strip` decoder: remove up to `strip_count` copies of `strip_char` from the start of the
    /// decoded text.
    strip_char: char,
    strip_count: usize,
}

/// The decoder pipeline, reduced to the per-token mapping and the whole-text strip.
#[derive(Debug, Default, PartialEq)]
struct DecodePlan {
    byte_level: bool,
    /// `(pattern, content)` string replacements applied to each token's text.
    replacements: Vec<(String, String)>,
    byte_fallback: bool,
    /// A Metaspace decoder that removes the replacement character from the first token.
    metaspace_first: Option<char>,
    strip: Option<(char, usize)>,
}

impl TokenTable {
    /// `tokens[id]` is the token string of `id` (`None` for ids no token has); `special_ids` are
    /// skipped when decoding. `decoder` is tokenizer.json's `decoder` value; `path` names the file
    /// in errors.
    pub fn new(
        tokens: &[Option<String>],
        special_ids: impl IntoIterator<Item = u32>,
        decoder: Option<&Value>,
        path: &Path,
    ) -> Result<Self, TokenizerError> {
        let plan = DecodePlan::from_json(decoder, path)?;
        let bytes =
            tokens.iter().map(|t| t.as_deref().map(|t| plan.token_bytes(t, false)).unwrap_or_default()).collect();
        let first_token_bytes = plan.metaspace_first.map(|_| {
            tokens.iter().map(|t| t.as_deref().map(|t| plan.token_bytes(t, true)).unwrap_or_default()).collect()
        });
        let exists: Vec<bool> = tokens.iter().map(Option::is_some).collect();
        let mut special = vec![false; tokens.len()];
        for id in special_ids {
            if let Some(flag) = special.get_mut(id as usize) {
                *flag = true;
            }
        }
        let (strip_char, strip_count) = plan.strip.unwrap_or((' ', 0));
        Ok(TokenTable { bytes, special, exists, first_token_bytes, strip_char, strip_count })
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The bytes `id` contributes anywhere but at the very start of a decoded text (empty for an
    /// unknown id).
    pub fn bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn all_bytes(&self) -> &[Vec<u8>] {
        &self.bytes
    }

    /// The bytes `id` adds to the output, or `None` when decoding skips it (special or unknown).
    /// `first` says whether no token has been added before it.
    pub fn visible_bytes(&self, id: u32, first: bool) -> Option<&[u8]> {
        let i = id as usize;
        if !self.exists.get(i).copied().unwrap_or(false) || self.special[i] {
            return None;
        }
        match (&self.first_token_bytes, first) {
            (Some(firsts), true) => Some(&firsts[i]),
            _ => Some(&self.bytes[i]),
        }
    }

    pub fn strip_rule(&self) -> (char, usize) {
        (self.strip_char, self.strip_count)
    }

    /// One-shot decode of a whole id list, skipping special tokens. Invalid UTF-8 becomes U+FFFD per
    /// maximal invalid sequence (`String::from_utf8_lossy`), the same rule the streaming decoder can
    /// apply without revising text it already sent. (HF's ByteFallback decoder instead replaces every
    /// byte of an invalid run of byte tokens; the two agree whenever the bytes are valid UTF-8.)
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_ids(ids, false)
    }

    /// `decode` that keeps special tokens as their text (HF's `decode(ids,
    /// skip_special_tokens=False)`): what a rendered chat prompt tokenizes from.
    pub fn decode_with_special(&self, ids: &[u32]) -> String {
        self.decode_ids(ids, true)
    }

    fn decode_ids(&self, ids: &[u32], keep_special: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        let mut first = true;
        for &id in ids {
            let special = keep_special && self.is_special(id) && self.exists.get(id as usize).copied().unwrap_or(false);
            if let Some(b) = self.visible_bytes(id, first).or_else(|| special.then(|| self.bytes(id))) {
                bytes.extend_from_slice(b);
                first = false;
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        strip_leading(&text, self.strip_char, self.strip_count).to_owned()
    }
}

/// Removes up to `count` leading copies of `ch`, as HF's `Strip` decoder does to the fused text.
pub(crate) fn strip_leading(text: &str, ch: char, count: usize) -> &str {
    let mut rest = text;
    for _ in 0..count {
        match rest.strip_prefix(ch) {
            Some(r) => rest = r,
            None => break,
        }
    }
    rest
}

impl DecodePlan {
    fn from_json(decoder: Option<&Value>, path: &Path) -> Result<Self, TokenizerError> {
        let unsupported = |what: String| {
            TokenizerError::invalid(
                path,
                format!(
                    "{what}; kiln decodes byte-level BPE (a ByteLevel decoder) and SentencePiece-style \
                     tokenizers (Replace, ByteFallback, Fuse, Strip or Metaspace decoders, in that order)"
                ),
            )
        };
        let Some(decoder) = decoder.filter(|d| !d.is_null()) else {
            return Err(unsupported("tokenizer.json has no `decoder`".into()));
        };
        let steps: Vec<&Value> = match decoder.get("type").and_then(Value::as_str) {
            Some("Sequence") => match decoder.get("decoders").and_then(Value::as_array) {
                Some(list) => list.iter().collect(),
                None => return Err(unsupported("the Sequence decoder has no `decoders` list".into())),
            },
            _ => vec![decoder],
        };

        // The HF pipeline runs per-token text maps, then byte fallback, then fuses the tokens into
        // one string, then strips it. Steps in another order would need a different model of decoding.
        #[derive(PartialEq, PartialOrd)]
        enum Stage {
            TokenText,
            Bytes,
            Fused,
        }
        let mut stage = Stage::TokenText;
        let mut plan = DecodePlan::default();
        for step in steps {
            let kind = step.get("type").and_then(Value::as_str).unwrap_or("(no type)");
            match kind {
                "ByteLevel" => {
                    plan.byte_level = true;
                    stage = Stage::Fused;
                }
                "Replace" if stage == Stage::TokenText => {
                    let pattern = step.get("pattern").and_then(|p| p.get("String")).and_then(Value::as_str);
                    let content = step.get("content").and_then(Value::as_str);
                    match (pattern, content) {
                        (Some(p), Some(c)) if !p.is_empty() => plan.replacements.push((p.into(), c.into())),
                        _ => return Err(unsupported("a Replace decoder without a plain string pattern".into())),
                    }
                }
                "Metaspace" if stage == Stage::TokenText => {
                    let replacement =
                        step.get("replacement").and_then(Value::as_str).and_then(single_char).ok_or_else(|| {
                            unsupported("a Metaspace decoder without a one-character `replacement`".into())
                        })?;
                    // Older files say `add_prefix_space`; newer ones `prepend_scheme` (default "always").
                    let prepends = match step.get("prepend_scheme").and_then(Value::as_str) {
                        Some(scheme) => scheme != "never",
                        None => step.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(true),
                    };
                    plan.replacements.push((replacement.to_string(), " ".into()));
                    if prepends {
                        plan.metaspace_first = Some(replacement);
                    }
                }
                "ByteFallback" if stage == Stage::TokenText => {
                    plan.byte_fallback = true;
                    stage = Stage::Bytes;
                }
                "Fuse" => stage = Stage::Fused,
                "Strip" if stage == Stage::Fused && plan.strip.is_none() => {
                    let content = step.get("content").and_then(Value::as_str).and_then(single_char);
                    let start = step.get("start").and_then(Value::as_u64);
                    let stop = step.get("stop").and_then(Value::as_u64).unwrap_or(0);
                    match (content, start, stop) {
                        (Some(c), Some(n), 0) => plan.strip = Some((c, n as usize)),
                        _ => return Err(unsupported(
                            "a Strip decoder that strips the end of the text (`stop` > 0) or has no `content`/`start`"
                                .into(),
                        )),
                    }
                }
                other => {
                    return Err(unsupported(format!("the decoder step `{other}` is not supported in this position")))
                }
            }
        }
        if plan.byte_level && (plan.byte_fallback || !plan.replacements.is_empty()) {
            return Err(unsupported("a ByteLevel decoder combined with Replace/ByteFallback/Metaspace".into()));
        }
        Ok(plan)
    }

    /// The bytes one token contributes. `first`: it is the first token decoded (Metaspace only).
    fn token_bytes(&self, token: &str, first: bool) -> Vec<u8> {
        if self.byte_level {
            return byte_level_bytes(token);
        }
        let mut text = token.to_owned();
        if let (true, Some(rep)) = (first, self.metaspace_first) {
            text = text.replace(rep, "");
        }
        for (pattern, content) in &self.replacements {
            if text.contains(pattern.as_str()) {
                text = text.replace(pattern.as_str(), content);
            }
        }
        if self.byte_fallback {
            if let Some(byte) = byte_fallback_value(&text) {
                return vec![byte];
            }
        }
        text.into_bytes()
    }
}

fn single_char(s: &str) -> Option<char> {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}

/// `<0xAB>` → 0xAB, exactly the tokens HF's ByteFallback decoder treats as bytes.
fn byte_fallback_value(token: &str) -> Option<u8> {
    if token.len() == 6 && token.starts_with("<0x") && token.ends_with('>') {
        u8::from_str_radix(&token[3..5], 16).ok()
    } else {
        None
    }
}

/// A byte-level token's bytes: each character maps back through the GPT-2 byte table. Like HF, a
/// token with a character outside the table (an added token such as `<|im_start|>` is fine, its
/// characters are printable ASCII) contributes its own UTF-8 bytes instead.
fn byte_level_bytes(token: &str) -> Vec<u8> {
    token.chars().map(gpt2_char_to_byte).collect::<Option<Vec<u8>>>().unwrap_or_else(|| token.as_bytes().to_vec())
}

/// The inverse of GPT-2's `bytes_to_unicode`: printable Latin-1 bytes (`!`..`~`, `¡`..`¬`, `®`..`ÿ`)
/// stand for themselves; the 68 others (0..=32, 127..=160, 173), in order, are shifted to U+0100
/// onwards so that no byte is whitespace or a control character.
pub(crate) fn gpt2_char_to_byte(c: char) -> Option<u8> {
    let code = c as u32;
    match code {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => Some(code as u8),
        0x100..=0x120 => Some((code - 0x100) as u8),        // bytes 0..=32
        0x121..=0x142 => Some((code - 0x121 + 0x7F) as u8), // bytes 127..=160
        0x143 => Some(0xAD),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// GPT-2's `bytes_to_unicode`, written the way the Python original builds it, to check the
    /// closed form above against.
    fn bytes_to_unicode() -> Vec<(u8, char)> {
        let mut bs: Vec<u32> = (0x21..=0x7E).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
        let mut cs = bs.clone();
        let mut n = 0;
        for b in 0..256 {
            if !bs.contains(&b) {
                bs.push(b);
                cs.push(256 + n);
                n += 1;
            }
        }
        bs.into_iter().zip(cs).map(|(b, c)| (b as u8, char::from_u32(c).unwrap())).collect()
    }

    #[test]
    fn gpt2_table_inverts_bytes_to_unicode() {
        let table = bytes_to_unicode();
        assert_eq!(table.len(), 256);
        for (byte, ch) in table {
            assert_eq!(gpt2_char_to_byte(ch), Some(byte), "char {ch:?} (U+{:04X})", ch as u32);
        }
        for c in ['\u{20}', '\u{A0}', '\u{AD}', '\u{144}', '▁', '你'] {
            assert_eq!(gpt2_char_to_byte(c), None, "{c:?}");
        }
    }

    fn llama_decoder() -> Value {
        json!({"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]})
    }

    fn table(tokens: &[&str], special: &[u32], decoder: Value) -> TokenTable {
        let tokens: Vec<Option<String>> = tokens.iter().map(|t| Some(t.to_string())).collect();
        TokenTable::new(&tokens, special.iter().copied(), Some(&decoder), Path::new("tokenizer.json")).unwrap()
    }

    #[test]
    fn sentencepiece_bytes_and_leading_strip() {
        let t =
            table(&["<s>", "▁Hello", "▁▁", "<0xE4>", "<0xBD>", "<0xA0>", "<0x0A>", "a<0x41>"], &[0], llama_decoder());
        assert_eq!(t.bytes(1), b" Hello");
        assert_eq!(t.bytes(2), b"  ");
        assert_eq!(t.bytes(3), [0xE4]);
        assert_eq!(t.bytes(6), b"\n");
        assert_eq!(t.bytes(7), b"a<0x41>", "only whole tokens of the form <0xAB> are bytes");
        assert_eq!(t.bytes(99), b"", "unknown ids contribute nothing");
        assert_eq!(t.decode(&[0, 1, 2, 3, 4, 5, 6]), "Hello  你\n");
        assert_eq!(t.decode(&[2, 1]), "  Hello", "only one leading space is stripped");
        assert_eq!(t.decode(&[3, 4]), "\u{FFFD}", "an incomplete character becomes one U+FFFD");
        assert!(t.is_special(0) && !t.is_special(1) && !t.is_special(1000));
    }

    #[test]
    fn metaspace_decoder_drops_replacement_in_first_token_only() {
        let decoder = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true});
        let t = table(&["<s>", "▁▁Hi", "▁there"], &[0], decoder);
        assert_eq!(t.decode(&[0, 1, 2]), "Hi there");
        assert_eq!(t.decode(&[2, 1]), "there  Hi");
        // Kept, the special token is the first one: the next keeps its leading spaces.
        assert_eq!(t.decode_with_special(&[0, 1, 2]), "<s>  Hi there");
        assert_eq!(t.decode_with_special(&[1, 2, 77]), "Hi there", "unknown ids still add nothing");
        let never = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never"});
        assert_eq!(table(&["▁a"], &[], never).decode(&[0]), " a");
    }

    #[test]
    fn byte_level_tokens_map_through_the_gpt2_table() {
        let t = table(&["<|im_start|>", "ĠHello", "Ċ", "ä½", "ł", "é"], &[0], json!({"type": "ByteLevel"}));
        assert_eq!(t.bytes(1), b" Hello");
        assert_eq!(t.bytes(2), b"\n");
        assert_eq!(t.decode(&[0, 1, 2, 3, 4]), " Hello\n你", "no strip for byte-level");
        assert_eq!(t.decode_with_special(&[0, 1, 2, 0]), "<|im_start|> Hello\n<|im_start|>");
        assert_eq!(t.bytes(0), b"<|im_start|>");
        assert_eq!(t.bytes(5), [0xE9]);
    }

    #[test]
    fn unsupported_decoders_are_load_errors() {
        let cases = [
            json!(null),
            json!({"type": "WordPiece", "prefix": "##"}),
            json!({"type": "Sequence", "decoders": [{"type": "Strip", "content": " ", "start": 1, "stop": 0}]}),
            json!({"type": "Sequence", "decoders": [{"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 0, "stop": 1}]}),
            json!({"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}]}),
            json!({"type": "Replace", "pattern": {"Regex": "\\s"}, "content": " "}),
        ];
        for decoder in cases {
            let err = TokenTable::new(&[Some("a".into())], [], Some(&decoder), Path::new("x/tokenizer.json"));
            let message = err.unwrap_err().to_string();
            assert!(
                message.starts_with("x/tokenizer.json: ") && message.contains("kiln decodes"),
                "{decoder}: {message}"
            );
        }
    }
}
