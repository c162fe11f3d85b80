//! The places where minijinja behaves unlike the jinja2-on-Python that HF renders chat templates
//! with, brought back to the Python behaviour: `str.title()` and jinja2's `title` filter, and the
//! `{% generation %}` tag of HF's environment. (minijinja already prints `True`/`None` like Python.)

use minijinja::value::Value;
use minijinja::{Error, State};

/// Python string methods (`.strip()`, `.split()`, ...) through minijinja-contrib's pycompat, except
/// `.title()`, which there follows jinja2's filter rather than Python's `str.title`.
pub(crate) fn unknown_method_callback(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    match (value.as_str(), method, args) {
        (Some(s), "title", []) => Ok(Value::from(python_title(s))),
        _ => minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args),
    }
}

/// Python's `str.title()`: a cased letter is uppercased after an uncased character (space,
/// punctuation, `«`, a CJK character, ...) and lowercased after a cased one.
pub(crate) fn python_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut previous_is_cased = false;
    for c in s.chars() {
        let cased = c.is_uppercase() || c.is_lowercase();
        match (cased, previous_is_cased) {
            (true, true) => out.extend(c.to_lowercase()),
            (true, false) => out.extend(c.to_uppercase()),
            (false, _) => out.push(c),
        }
        previous_is_cased = cased;
    }
    out
}

/// jinja2's `title` filter: words start after whitespace and `-`, `(`, `{`, `[`, `<` only; each
/// word's first character is uppercased and the rest lowercased.
pub(crate) fn jinja2_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut at_word_start = true;
    for c in s.chars() {
        if c.is_whitespace() || matches!(c, '-' | '(' | '{' | '[' | '<') {
            out.push(c);
            at_word_start = true;
        } else if at_word_start {
            out.extend(c.to_uppercase());
            at_word_start = false;
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// HF's jinja environment knows a `{% generation %}...{% endgeneration %}` block that only marks
/// assistant text for training masks; it renders its body unchanged. minijinja has no such tag, so
/// it becomes the equivalent `{% if true %}...{% endif %}`, keeping any whitespace-control marks.
pub(crate) fn without_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        out.push_str(&rest[..open]);
        let tag = &rest[open..];
        let Some(close) = tag.find("%}") else {
            rest = tag;
            break;
        };
        let inner = &tag[2..close];
        let body = inner.trim_start_matches(['-', '+']).trim_end_matches(['-', '+']).trim();
        let replacement = match body {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(new_body) => {
                let start = inner.find(body).expect("body is a substring of inner");
                out.push_str("{%");
                out.push_str(&inner[..start]);
                out.push_str(new_body);
                out.push_str(&inner[start + body.len()..]);
                out.push_str("%}");
            }
            None => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tag_rewrite_keeps_whitespace_marks() {
        assert_eq!(
            without_generation_tags("a{%- generation %}b{% endgeneration -%}c{{ x }}{% if y %}"),
            "a{%- if true %}b{% endif -%}c{{ x }}{% if y %}"
        );
        assert_eq!(without_generation_tags("unclosed {% tag"), "unclosed {% tag");
    }

    #[test]
    fn title_like_python_and_like_jinja2() {
        // Expected values printed by Python 3: str.title() and jinja2's do_title.
        let text = "«quotes» o'neil mcDONALD 日本x (paren)x-y 2nd";
        assert_eq!(python_title(text), "«Quotes» O'Neil Mcdonald 日本X (Paren)X-Y 2Nd");
        assert_eq!(jinja2_title(text), "«quotes» O'neil Mcdonald 日本x (Paren)x-Y 2nd");
    }
}
