//! The `tojson` filter as Hugging Face defines it for chat templates: Python's `json.dumps` with
//! `ensure_ascii=False` by default and the `indent`, `separators`, `sort_keys` options. minijinja's
//! own `tojson` is jinja2's HTML-safe variant (it escapes `<`, `>`, `&`, `'` and writes no spaces),
//! which would change tool definitions in prompts, so templates get this one instead.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Error, ErrorKind};

struct Style {
    ensure_ascii: bool,
    /// `None`: everything on one line.
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
}

pub(crate) fn tojson(value: &Value, kwargs: Kwargs) -> Result<String, Error> {
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let indent: Option<String> = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_owned()),
        Some(v) => {
            let width = v.as_i64().ok_or_else(|| bad_arg("indent must be an integer, a string or none"))?;
            Some(" ".repeat(width.max(0) as usize))
        }
    };
    // Python's defaults: (", ", ": ") on one line, ("," , ": ") when indenting.
    let (item_separator, key_separator) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(pair) if pair.len() == 2 => (pair[0].clone(), pair[1].clone()),
        Some(_) => return Err(bad_arg("separators must be a pair of strings")),
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
    };
    kwargs.assert_all_used()?;
    let style = Style { ensure_ascii, indent, item_separator, key_separator, sort_keys };
    let mut out = String::new();
    write_value(&mut out, value, &style, 0)?;
    Ok(out)
}

fn bad_arg(message: &str) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("tojson: {message}"))
}

fn write_value(out: &mut String, value: &Value, style: &Style, depth: usize) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
        ValueKind::Number => {
            let float = f64::try_from(value.clone()).map_err(|_| bad_arg("a number that is not a float"))?;
            out.push_str(&python_float_repr(float));
        }
        ValueKind::String => write_string(out, value.as_str().unwrap_or_default(), style.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, '[', ']', &items, style, depth, |out, item, depth| {
                write_value(out, item, style, depth)
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((key_string(&key)?, item));
            }
            if style.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, '{', '}', &entries, style, depth, |out, (key, item), depth| {
                write_string(out, key, style.ensure_ascii);
                out.push_str(&style.key_separator);
                write_value(out, item, style, depth)
            })?;
        }
        other => return Err(bad_arg(&format!("cannot serialize a value of kind {other}"))),
    }
    Ok(())
}

fn write_container<T>(
    out: &mut String,
    open: char,
    close: char,
    items: &[T],
    style: &Style,
    depth: usize,
    mut write_item: impl FnMut(&mut String, &T, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&style.item_separator);
        }
        if let Some(indent) = &style.indent {
            out.push('\n');
            out.push_str(&indent.repeat(depth + 1));
        }
        write_item(out, item, depth + 1)?;
    }
    if let Some(indent) = &style.indent {
        out.push('\n');
        out.push_str(&indent.repeat(depth));
    }
    out.push(close);
    Ok(())
}

/// Python turns non-string keys into strings: numbers as their repr, `true`/`false`, `null`.
fn key_string(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::None | ValueKind::Undefined | ValueKind::Bool | ValueKind::Number => {
            let mut s = String::new();
            write_value(
                &mut s,
                key,
                &Style {
                    ensure_ascii: false,
                    indent: None,
                    item_separator: String::new(),
                    key_separator: String::new(),
                    sort_keys: false,
                },
                0,
            )?;
            Ok(s)
        }
        other => Err(bad_arg(&format!("keys must be strings, numbers, booleans or none, not {other}"))),
    }
}

/// A JSON string as Python writes it: `"`, `\` and control characters escaped, non-ASCII kept
/// unless `ensure_ascii` (then `\uXXXX`, with surrogate pairs above U+FFFF).
fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest digits that round-trip, positional for exponents -4..16,
/// otherwise `d.ddde+XX`; `NaN` and `Infinity` as `json.dumps` writes them.
fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    // Rust's `{:e}` gives the shortest round-trip digits as `d.ddde-X`.
    let sci = format!("{x:e}");
    let (mantissa, exponent) = sci.split_once('e').expect("{:e} always writes an exponent");
    let exponent: i32 = exponent.parse().expect("{:e} writes an integer exponent");
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if negative { "-" } else { "" };
    if (-4..16).contains(&exponent) {
        let point = exponent + 1; // digits before the decimal point
        let (int_part, frac_part) = if point <= 0 {
            ("0".to_owned(), format!("{}{}", "0".repeat((-point) as usize), digits))
        } else if point as usize >= digits.len() {
            (format!("{}{}", digits, "0".repeat(point as usize - digits.len())), String::new())
        } else {
            (digits[..point as usize].to_owned(), digits[point as usize..].to_owned())
        };
        let frac_part = if frac_part.is_empty() { "0".to_owned() } else { frac_part };
        format!("{sign}{int_part}.{frac_part}")
    } else {
        let mantissa = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::Environment;

    fn render(template: &str) -> String {
        let mut env = Environment::new();
        env.add_filter("tojson", tojson);
        // A jinja dict literal keeps its key order, as a Python dict does.
        let x = r#"{% set x = {"name": "<f>", "n": 3, "ok": true, "none": none, "list": [1, "é\n"], "empty": []} %}"#;
        env.render_str(&format!("{x}{template}"), ()).unwrap()
    }

    #[test]
    fn matches_python_json_dumps() {
        // Expected strings are what Python's json.dumps(..., ensure_ascii=False) prints.
        assert_eq!(
            render("{{ x | tojson }}"),
            r#"{"name": "<f>", "n": 3, "ok": true, "none": null, "list": [1, "é\n"], "empty": []}"#
        );
        assert_eq!(render("{{ x.list | tojson(indent=2) }}"), "[\n  1,\n  \"é\\n\"\n]");
        assert_eq!(render("{{ x.list | tojson(ensure_ascii=true) }}"), r#"[1, "\u00e9\n"]"#);
        assert_eq!(
            render("{{ x | tojson(sort_keys=true, separators=[',', ':']) }}"),
            r#"{"empty":[],"list":[1,"é\n"],"n":3,"name":"<f>","none":null,"ok":true}"#
        );
        assert_eq!(render("{{ '😀\x01' | tojson(ensure_ascii=true) }}"), r#""\ud83d\ude00\u0001""#);
        assert_eq!(render("{{ {1: 2.5, none: true} | tojson }}"), r#"{"1": 2.5, "null": true}"#);
    }

    #[test]
    fn floats_print_like_python_repr() {
        for (x, python) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456.789, "123456.789"),
            (0.0, "0.0"),
            (f64::INFINITY, "Infinity"),
        ] {
            assert_eq!(python_float_repr(x), python, "{x}");
        }
    }
}
