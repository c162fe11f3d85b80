//! Reading request fields one by one from a JSON object, so every wrong type or range becomes a
//! 400 that names the parameter (serde's own errors name a line and column, not the field).

use serde_json::{Map, Value};

use super::error::ApiError;
use super::limits::{MAX_JSON_DEPTH, MAX_STOP_BYTES};
use super::valid::ResponseFormat;

pub struct Fields {
    map: Map<String, Value>,
}

impl Fields {
    pub fn parse(body: &[u8]) -> Result<Fields, ApiError> {
        if body.is_empty() {
            return Err(ApiError::invalid_json("The request body is empty; send a JSON object."));
        }
        check_depth(body)?;
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid_json(format!("The request body is not valid JSON: {e}")))?;
        match value {
            Value::Object(map) => Ok(Fields { map }),
            _ => Err(ApiError::invalid_json("The request body must be a JSON object.")),
        }
    }

    /// The raw value of a field; JSON `null` counts as absent, as OpenAI treats it.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    pub fn f32_in(&self, name: &str, min: f32, max: f32) -> Result<Option<f32>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => {
                let x =
                    v.as_f64().ok_or_else(|| ApiError::invalid_param(name, format!("`{name}` must be a number.")))?;
                if !(x >= min as f64 && x <= max as f64) {
                    return Err(ApiError::invalid_param(
                        name,
                        format!("`{name}` must be between {min} and {max}; got {x}."),
                    ));
                }
                Ok(Some(x as f32))
            }
        }
    }

    pub fn u64_in(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => {
                // Whole numbers written as 5.0 are accepted, as Python clients sometimes send them.
                let x = v.as_u64().or_else(|| whole_number(v).filter(|f| *f >= 0.0).map(|f| f as u64)).ok_or_else(
                    || ApiError::invalid_param(name, format!("`{name}` must be a non-negative integer.")),
                )?;
                if x < min || x > max {
                    return Err(ApiError::invalid_param(
                        name,
                        format!("`{name}` must be between {min} and {max}; got {x}."),
                    ));
                }
                Ok(Some(x))
            }
        }
    }

    /// Seeds may be any integer, negative too; they are reinterpreted as u64.
    pub fn seed(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(|s| s as u64)
                .or_else(|| v.as_u64())
                .or_else(|| whole_number(v).map(|f| f as i64 as u64))
                .map(Some)
                .ok_or_else(|| ApiError::invalid_param(name, format!("`{name}` must be an integer."))),
        }
    }

    /// A probability that must be above 0 (`top_p`): at most `max`. A positive value too small
    /// for an f32 becomes the smallest positive f32 rather than a refused 0.
    pub fn positive_f32(&self, name: &str, max: f32) -> Result<Option<f32>, ApiError> {
        let Some(x) = self.f32_in(name, 0.0, max)? else { return Ok(None) };
        let raw = self.get(name).and_then(Value::as_f64).unwrap_or(0.0);
        if raw <= 0.0 {
            return Err(ApiError::invalid_param(name, format!("`{name}` must be greater than 0 and at most {max}.")));
        }
        Ok(Some(x.max(f32::MIN_POSITIVE)))
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::invalid_param(name, format!("`{name}` must be true or false."))),
        }
    }

    pub fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::invalid_param(name, format!("`{name}` must be a string."))),
        }
    }

    /// `stop`: a string or a list of up to `max` strings; empty strings are refused.
    pub fn stop(&self, name: &str, max: usize) -> Result<Vec<String>, ApiError> {
        let stops: Vec<String> = match self.get(name) {
            None => return Ok(Vec::new()),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => {
                items.iter().map(|item| item.as_str().map(str::to_string)).collect::<Option<Vec<String>>>().ok_or_else(
                    || ApiError::invalid_param(name, format!("`{name}` must be a string or a list of strings.")),
                )?
            }
            Some(_) => {
                return Err(ApiError::invalid_param(name, format!("`{name}` must be a string or a list of strings.")))
            }
        };
        if stops.len() > max {
            return Err(ApiError::invalid_param(
                name,
                format!("`{name}` may hold at most {max} sequences; got {}.", stops.len()),
            ));
        }
        if stops.iter().any(String::is_empty) {
            return Err(ApiError::invalid_param(name, format!("`{name}` sequences must not be empty.")));
        }
        if let Some(long) = stops.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid_param(
                name,
                format!("Each `{name}` sequence may be at most {MAX_STOP_BYTES} bytes; one is {}.", long.len()),
            ));
        }
        Ok(stops)
    }

    /// `response_format`: `{"type": "text"}`, `{"type": "json_object"}` (JSON mode), or a JSON
    /// schema: OpenAI's `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`
    /// or the hosted service's `{"type": "json_object", "schema": {...}}`.
    pub fn response_format(&self, name: &str) -> Result<ResponseFormat, ApiError> {
        let format = match self.get(name) {
            None | Some(Value::Null) => return Ok(ResponseFormat::Text),
            Some(Value::Object(format)) => format,
            Some(_) => {
                return Err(ApiError::invalid_param(
                    name,
                    format!("`{name}` must be an object like {{\"type\": \"json_object\"}}."),
                ))
            }
        };
        let schema_in = |holder: &Map<String, Value>, param: String| match holder.get("schema") {
            Some(schema @ (Value::Object(_) | Value::Bool(_))) => {
                Ok(ResponseFormat::JsonSchema { schema: schema.clone(), param })
            }
            Some(_) => Err(ApiError::invalid_param(&param, format!("`{param}` must be a JSON Schema object."))),
            None => Err(ApiError::invalid_param(&param, format!("`{param}` is required."))),
        };
        match format.get("type").and_then(Value::as_str) {
            Some("text") => Ok(ResponseFormat::Text),
            Some("json_object") if format.contains_key("schema") => schema_in(format, format!("{name}.schema")),
            Some("json_object") => Ok(ResponseFormat::JsonObject),
            Some("json_schema") => {
                let param = format!("{name}.json_schema");
                let Some(Value::Object(json_schema)) = format.get("json_schema") else {
                    return Err(ApiError::invalid_param(
                        &param,
                        format!("`{param}` is required: an object with `name` and `schema`."),
                    ));
                };
                match json_schema.get("name") {
                    None => {}
                    Some(Value::String(label)) if label.len() <= 64 => {}
                    Some(_) => {
                        return Err(ApiError::invalid_param(
                            &format!("{param}.name"),
                            format!("`{param}.name` must be a string of at most 64 characters."),
                        ))
                    }
                }
                // `strict: false` would let a model stray; kiln always constrains, which meets both.
                if !matches!(json_schema.get("strict"), None | Some(Value::Null | Value::Bool(_))) {
                    return Err(ApiError::invalid_param(
                        &format!("{param}.strict"),
                        format!("`{param}.strict` must be true or false."),
                    ));
                }
                schema_in(json_schema, format!("{param}.schema"))
            }
            Some(other) => Err(ApiError::invalid_param(
                name,
                format!("`{name}.type` `{other}` is not supported; use `text`, `json_object` or `json_schema`."),
            )),
            None => Err(ApiError::invalid_param(name, format!("`{name}` needs a `type`."))),
        }
    }
}

/// A whole number written as a float (`5.0`), as Python clients sometimes send integers; within
/// what an i64 or u64 holds.
pub fn whole_number(value: &Value) -> Option<f64> {
    value.as_f64().filter(|f| f.fract() == 0.0 && *f > -9.2e18 && *f < 1.8e19)
}

/// Refuses a body nesting deeper than `MAX_JSON_DEPTH`, naming the top-level field it is in. A
/// scan of brackets outside strings, before parsing: valid or not, the body is never parsed
/// deeper than the bound.
fn check_depth(body: &[u8]) -> Result<(), ApiError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    // The most recent string that ended at depth 1: the top-level key being read.
    let mut string_start = 0;
    let mut field: &[u8] = b"";
    for (i, &byte) in body.iter().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    in_string = false;
                    if depth == 1 {
                        field = &body[string_start..i];
                    }
                }
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => {
                in_string = true;
                string_start = i + 1;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    let field = String::from_utf8_lossy(field);
                    let param = if field.is_empty() { "body".to_string() } else { field.into_owned() };
                    return Err(ApiError::invalid_param(
                        &param,
                        format!("`{param}` nests deeper than {MAX_JSON_DEPTH} levels of JSON, the most a request may."),
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Fields {
        Fields::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn types_and_ranges_name_the_parameter() {
        let f = fields(r#"{"t": 3, "s": "x", "n": 2.0, "neg": -1, "null": null, "stop": ["a", "b"], "bad_stop": [1]}"#);
        assert_eq!(f.f32_in("t", 0.0, 2.0).unwrap_err().param.as_deref(), Some("t"));
        assert_eq!(f.f32_in("s", 0.0, 2.0).unwrap_err().message, "`s` must be a number.");
        assert_eq!(f.u64_in("n", 1, 4).unwrap(), Some(2));
        assert!(f.u64_in("neg", 0, 4).is_err());
        assert_eq!(f.f32_in("null", 0.0, 1.0).unwrap(), None);
        assert_eq!(f.f32_in("missing", 0.0, 1.0).unwrap(), None);
        assert_eq!(f.stop("stop", 16).unwrap(), vec!["a", "b"]);
        assert!(f.stop("stop", 1).is_err());
        assert!(f.stop("bad_stop", 4).is_err());
        assert_eq!(f.seed("neg").unwrap(), Some(u64::MAX));
    }

    #[test]
    fn nesting_is_bounded_and_names_the_field() {
        let nested = |levels: usize| format!("{{\"messages\": {}1{}}}", "[".repeat(levels - 1), "]".repeat(levels - 1));
        // The body's own object is the first level.
        assert!(Fields::parse(nested(MAX_JSON_DEPTH).as_bytes()).is_ok());
        let error = Fields::parse(nested(MAX_JSON_DEPTH + 1).as_bytes()).err().unwrap();
        assert_eq!((error.status, error.param.as_deref()), (400, Some("messages")));
        // Brackets inside strings do not count, escaped quotes do not end them.
        let quoted = format!("{{\"a\": \"\\\"{}\"}}", "[".repeat(100));
        assert!(Fields::parse(quoted.as_bytes()).is_ok());
        assert_eq!(Fields::parse("[".repeat(40).as_bytes()).err().unwrap().param.as_deref(), Some("body"));
    }

    #[test]
    fn bodies_that_are_not_objects_are_refused() {
        for body in ["", "[1]", "{", "nul"] {
            assert_eq!(Fields::parse(body.as_bytes()).err().unwrap().status, 400, "{body}");
        }
        let f = fields(r#"{"response_format": {"type": "json_object"}, "r2": {"type": "xml"}}"#);
        assert_eq!(f.response_format("response_format").unwrap(), ResponseFormat::JsonObject);
        assert!(f.response_format("r2").is_err());
    }

    #[test]
    fn response_formats_in_both_shapes() {
        let schema = serde_json::json!({"type": "object"});
        let f = fields(
            r#"{"a": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": true}},
                "b": {"type": "json_object", "schema": {"type": "object"}}, "c": {"type": "text"}, "d": null,
                "e": {"type": "json_schema", "json_schema": {"name": "x"}},
                "f": {"type": "json_schema", "json_schema": {"schema": 3}},
                "g": {"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}},
                "h": {"type": "json_schema"}}"#,
        );
        let expect = |param: &str| ResponseFormat::JsonSchema { schema: schema.clone(), param: param.to_string() };
        assert_eq!(f.response_format("a").unwrap(), expect("a.json_schema.schema"));
        assert_eq!(f.response_format("b").unwrap(), expect("b.schema"));
        assert_eq!(f.response_format("c").unwrap(), ResponseFormat::Text);
        assert_eq!(f.response_format("d").unwrap(), ResponseFormat::Text);
        assert_eq!(f.response_format("absent").unwrap(), ResponseFormat::Text);
        for (name, param) in [
            ("e", "e.json_schema.schema"),
            ("f", "f.json_schema.schema"),
            ("g", "g.json_schema.strict"),
            ("h", "h.json_schema"),
        ] {
            assert_eq!(f.response_format(name).err().unwrap().param.as_deref(), Some(param), "{name}");
        }
    }
}
