//! OpenAI's `logit_bias`: an object from token ids, written as decimal strings, to an amount in
//! [-100, 100] added to that token's logit before sampling. Read here into (token, bias) pairs;
//! the ids are checked against the vocabulary where the request is prepared (`check_vocabulary`).

use serde_json::Value;

use super::error::ApiError;
use super::fields::Fields;
use super::limits::{MAX_LOGIT_BIAS, MAX_LOGIT_BIAS_VALUE};

const FIELD: &str = "logit_bias";

/// The entries, sorted by token id; absent or null is none.
pub fn parse_logit_bias(f: &Fields) -> Result<Vec<(u32, f32)>, ApiError> {
    let entries = match f.get(FIELD) {
        None => return Ok(Vec::new()),
        Some(Value::Object(entries)) => entries,
        Some(_) => {
            return Err(ApiError::invalid_param(
                FIELD,
                "`logit_bias` must be an object mapping token ids to biases, like {\"1234\": -100}.",
            ))
        }
    };
    if entries.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::invalid_param(
            FIELD,
            format!("`logit_bias` may hold at most {MAX_LOGIT_BIAS} tokens; got {}.", entries.len()),
        ));
    }
    let mut bias = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let token = token_id(key).ok_or_else(|| {
            ApiError::invalid_param(
                FIELD,
                format!("`logit_bias` keys must be token ids written as decimal strings, like \"1234\"; got {key:?}."),
            )
        })?;
        let amount = value.as_f64().filter(|v| v.abs() <= MAX_LOGIT_BIAS_VALUE as f64).ok_or_else(|| {
            ApiError::invalid_param(
                FIELD,
                format!(
                    "The bias of token {token} must be a number between -{MAX_LOGIT_BIAS_VALUE} and \
                     {MAX_LOGIT_BIAS_VALUE}; got {value}."
                ),
            )
        })?;
        bias.push((token, amount as f32));
    }
    bias.sort_by_key(|&(token, _)| token);
    // "7" and "007" are different keys of one token: which bias was meant is unclear.
    if let Some(pair) = bias.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(ApiError::invalid_param(
            FIELD,
            format!("Token {} appears twice in `logit_bias` (keys that differ only in leading zeros).", pair[0].0),
        ));
    }
    Ok(bias)
}

/// Refuses ids the served vocabulary does not have.
pub fn check_vocabulary(bias: &[(u32, f32)], vocab: usize) -> Result<(), ApiError> {
    match bias.iter().find(|&&(token, _)| token as usize >= vocab) {
        Some((token, _)) => Err(ApiError::invalid_param(
            FIELD,
            format!("Token id {token} in `logit_bias` is outside the vocabulary of {vocab} tokens."),
        )),
        None => Ok(()),
    }
}

/// A token id key: ASCII digits only (no sign, no spaces), within u32.
fn token_id(key: &str) -> Option<u32> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Vec<(u32, f32)>, ApiError> {
        parse_logit_bias(&Fields::parse(json.as_bytes()).unwrap())
    }

    #[test]
    fn entries_are_read_sorted_and_bounded() {
        assert_eq!(parse(r#"{}"#).unwrap(), vec![]);
        assert_eq!(parse(r#"{"logit_bias": null}"#).unwrap(), vec![]);
        assert_eq!(
            parse(r#"{"logit_bias": {"50": -100, "7": 100, "0": 2.5}}"#).unwrap(),
            vec![(0, 2.5), (7, 100.0), (50, -100.0)]
        );
        let at_bound: serde_json::Map<String, Value> =
            (0..MAX_LOGIT_BIAS).map(|i| (i.to_string(), Value::from(1))).collect();
        let body = |map: &serde_json::Map<String, Value>| format!(r#"{{"logit_bias": {}}}"#, Value::from(map.clone()));
        assert_eq!(parse(&body(&at_bound)).unwrap().len(), MAX_LOGIT_BIAS);
        let mut past = at_bound.clone();
        past.insert("99999".into(), Value::from(1));
        assert!(parse(&body(&past)).unwrap_err().message.contains(&format!("at most {MAX_LOGIT_BIAS}")));
    }

    #[test]
    fn bad_keys_values_and_shapes_name_logit_bias() {
        for bad in [
            r#"{"logit_bias": [1, 2]}"#,
            r#"{"logit_bias": "5"}"#,
            r#"{"logit_bias": {"abc": 1}}"#,
            r#"{"logit_bias": {"-5": 1}}"#,
            r#"{"logit_bias": {"+5": 1}}"#,
            r#"{"logit_bias": {" 5": 1}}"#,
            r#"{"logit_bias": {"": 1}}"#,
            r#"{"logit_bias": {"1.0": 1}}"#,
            r#"{"logit_bias": {"4294967296": 1}}"#,
            r#"{"logit_bias": {"5": 100.5}}"#,
            r#"{"logit_bias": {"5": -101}}"#,
            r#"{"logit_bias": {"5": "1"}}"#,
            r#"{"logit_bias": {"5": null}}"#,
            r#"{"logit_bias": {"7": 1, "007": 2}}"#,
        ] {
            let error = parse(bad).unwrap_err();
            assert_eq!((error.status, error.param.as_deref()), (400, Some("logit_bias")), "{bad}");
        }
    }

    #[test]
    fn ids_beyond_the_vocabulary_are_refused() {
        assert!(check_vocabulary(&[(0, 1.0), (99, -1.0)], 100).is_ok());
        let error = check_vocabulary(&[(0, 1.0), (100, -1.0)], 100).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("logit_bias"));
        assert!(error.message.contains("100 tokens"), "{}", error.message);
    }
}
