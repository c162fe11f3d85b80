//! Just enough JSON lexing for tool calls: where an object ends in text that is still arriving, the
//! raw text of an object's members, and whitespace removal. Working on the model's own text keeps
//! its key order, number spelling and escapes, which serde_json's `Value` would not (it sorts keys
//! and respells numbers). Whether the text is valid JSON is serde_json's job, not these functions'.

/// JSON's insignificant whitespace (RFC 8259): the only bytes `minify` removes.
fn is_json_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// Finds where a JSON object or array ends, fed the text from its opening bracket one chunk at a
/// time. Only brackets and strings are tracked, so a `Closed` span may still be invalid JSON.
#[derive(Debug, Clone, Default)]
pub(super) struct ValueEnd {
    /// Open brackets, innermost last.
    open: Vec<u8>,
    in_string: bool,
    escaped: bool,
    /// Bytes fed before the current chunk.
    fed: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scan {
    /// Not closed yet: feed more.
    Open,
    /// Closed after this many bytes from the first byte fed. Feed nothing more.
    Closed(usize),
    /// Cannot be a JSON container: the first byte is not `{`/`[`, or a bracket closes the wrong
    /// kind. Feed nothing more.
    Failed,
}

impl ValueEnd {
    pub(super) fn feed(&mut self, chunk: &[u8]) -> Scan {
        for (i, &byte) in chunk.iter().enumerate() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if byte == b'\\' {
                    self.escaped = true;
                } else if byte == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            if self.open.is_empty() && byte != b'{' && byte != b'[' {
                return Scan::Failed;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.open.push(byte),
                b'}' | b']' => {
                    let opener = if byte == b'}' { b'{' } else { b'[' };
                    if self.open.pop() != Some(opener) {
                        return Scan::Failed;
                    }
                    if self.open.is_empty() {
                        return Scan::Closed(self.fed + i + 1);
                    }
                }
                _ => {}
            }
        }
        self.fed += chunk.len();
        Scan::Open
    }
}

/// The members of a JSON object as raw text, `(key with its quotes, value)`, in written order.
/// Meant for text serde_json has already accepted; returns `None` rather than guess on anything
/// else.
pub(super) fn object_members(text: &str) -> Option<Vec<(&str, &str)>> {
    let bytes = text.as_bytes();
    let mut at = skip_space(bytes, 0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    let mut members = Vec::new();
    loop {
        at = skip_space(bytes, at);
        match bytes.get(at)? {
            b'}' => return Some(members),
            b',' => {
                at += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        // Every index below sits on an ASCII delimiter, so the slices are on char boundaries.
        let key_end = at + string_len(&bytes[at..])?;
        let key = &text[at..key_end];
        at = skip_space(bytes, key_end);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        at = skip_space(bytes, at + 1);
        let value_end = at + value_len(&bytes[at..])?;
        members.push((key, &text[at..value_end]));
        at = value_end;
    }
}

/// `json` without insignificant whitespace; everything else, string contents included, is kept
/// byte for byte.
pub(super) fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for ch in json.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
        } else if ch == '"' {
            in_string = true;
        } else if ch.is_ascii() && is_json_space(ch as u8) {
            continue;
        }
        out.push(ch);
    }
    out
}

fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(|&b| is_json_space(b)) {
        at += 1;
    }
    at
}

/// Length of the string literal at the start of `bytes`, quotes included.
fn string_len(bytes: &[u8]) -> Option<usize> {
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut escaped = false;
    for (i, &byte) in bytes.iter().enumerate().skip(1) {
        if escaped {
            escaped = false;
        } else if byte == b'\\' {
            escaped = true;
        } else if byte == b'"' {
            return Some(i + 1);
        }
    }
    None
}

/// Length of the JSON value at the start of `bytes`.
fn value_len(bytes: &[u8]) -> Option<usize> {
    match bytes.first()? {
        b'{' | b'[' => match ValueEnd::default().feed(bytes) {
            Scan::Closed(len) => Some(len),
            Scan::Open | Scan::Failed => None,
        },
        b'"' => string_len(bytes),
        // A number, `true`, `false` or `null`: up to the next delimiter.
        _ => {
            Some(bytes.iter().position(|&b| matches!(b, b',' | b'}' | b']') || is_json_space(b)).unwrap_or(bytes.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_end_tracks_nesting_and_strings_across_chunks() {
        let text = r#"{"a": [1, {"b": "}]\"{"}], "c": "x"} tail"#;
        let close = text.find(" tail").unwrap();
        for split in 0..=text.len() {
            let mut end = ValueEnd::default();
            let first = end.feed(&text.as_bytes()[..split]);
            let got = if first == Scan::Open { end.feed(&text.as_bytes()[split..]) } else { first };
            assert_eq!(got, Scan::Closed(close), "split at {split}");
        }
        assert_eq!(ValueEnd::default().feed(b"{\"a\": [}"), Scan::Failed, "a brace cannot close a bracket");
        assert_eq!(ValueEnd::default().feed(b"\"str\""), Scan::Failed, "only containers are scanned");
        assert_eq!(ValueEnd::default().feed(b"{\"a\": \"}"), Scan::Open, "the brace is inside a string");
    }

    #[test]
    fn members_keep_raw_text_and_order() {
        let text = " {\"zeta\" : {\"x\": [1, 2]} , \"name\":\"f\\\"g\", \"n\": -1.50e3,\"t\":true }";
        let members = object_members(text).unwrap();
        assert_eq!(
            members,
            vec![("\"zeta\"", "{\"x\": [1, 2]}"), ("\"name\"", "\"f\\\"g\""), ("\"n\"", "-1.50e3"), ("\"t\"", "true")]
        );
        assert_eq!(object_members("{}").unwrap(), vec![]);
        assert_eq!(object_members("[1]"), None);
    }

    #[test]
    fn minify_removes_only_insignificant_whitespace() {
        let json = "{ \"a b\" :\n\t[ 1 , \"x \\\" y\" ],\r\n \"é\": \"\\u00e9  \" }";
        assert_eq!(minify(json), "{\"a b\":[1,\"x \\\" y\"],\"é\":\"\\u00e9  \"}");
    }
}
