//! Reading a token route's request body the way DRF does: JSON, form or
//! multipart; each field a string, trimmed; every failing field reported
//! at once, in field order, with DRF's messages.

use bytes::Bytes;
use serde_json::Value;

use super::TokenError;

/// Reads the named fields from `body` of `content_type`.
pub fn fields(
    content_type: Option<&str>,
    body: &Bytes,
    names: &[&'static str],
) -> Result<Vec<String>, TokenError> {
    let media = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|m| !m.is_empty());
    let raw: Vec<Option<Raw>> = match media.as_deref() {
        // No body and no type: DRF sees `{}`.
        None => names.iter().map(|_| None).collect(),
        Some("application/json") => {
            if body.iter().all(u8::is_ascii_whitespace) {
                names.iter().map(|_| None).collect()
            } else {
                let v: Value = serde_json::from_slice(body)
                    .map_err(|e| TokenError::ParseError(format!("JSON parse error - {e}")))?;
                let obj = match v {
                    Value::Object(o) => o,
                    Value::Null => return Err(TokenError::NonField("No data provided".into())),
                    other => {
                        return Err(TokenError::NonField(format!(
                            "Invalid data. Expected a dictionary, but got {}.",
                            python_type(&other)
                        )))
                    }
                };
                names
                    .iter()
                    .map(|n| obj.get(*n).map(Raw::from_json))
                    .collect()
            }
        }
        Some("application/x-www-form-urlencoded") => {
            let pairs: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
            // QueryDict.get returns the last value of a repeated key.
            names
                .iter()
                .map(|n| {
                    pairs
                        .iter()
                        .rev()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| Raw::Text(v.clone()))
                })
                .collect()
        }
        Some("multipart/form-data") => {
            let boundary = content_type.and_then(boundary).ok_or_else(|| {
                TokenError::ParseError(
                    "Multipart form parse error - Invalid boundary in multipart: None".into(),
                )
            })?;
            let parts = multipart(body, &boundary);
            names
                .iter()
                .map(|n| {
                    parts
                        .iter()
                        .rev()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| Raw::Text(v.clone()))
                })
                .collect()
        }
        Some(other) => {
            return Err(TokenError::UnsupportedMediaType(
                content_type.unwrap_or(other).to_string(),
            ))
        }
    };
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (name, value) in names.iter().zip(raw) {
        match value {
            None => errors.push((*name, "This field is required.")),
            Some(Raw::Null) => errors.push((*name, "This field may not be null.")),
            Some(Raw::NotString) => errors.push((*name, "Not a valid string.")),
            Some(Raw::Text(t)) => {
                let t = t.trim();
                if t.is_empty() {
                    errors.push((*name, "This field may not be blank."));
                } else {
                    out.push(t.to_string());
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(TokenError::Fields(errors))
    }
}

enum Raw {
    Text(String),
    Null,
    NotString,
}

impl Raw {
    fn from_json(v: &Value) -> Raw {
        match v {
            Value::String(s) => Raw::Text(s.clone()),
            // DRF's CharField turns numbers into strings.
            Value::Number(n) => Raw::Text(n.to_string()),
            Value::Null => Raw::Null,
            Value::Bool(_) | Value::Array(_) | Value::Object(_) => Raw::NotString,
        }
    }
}

fn python_type(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "list",
        Value::String(_) => "str",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::Null => "NoneType",
        Value::Object(_) => "dict",
    }
}

fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("boundary")).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The text fields of a multipart/form-data body (files are ignored).
fn multipart(body: &[u8], boundary: &str) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    let delimiter = format!("--{boundary}");
    let mut out = Vec::new();
    for part in text.split(delimiter.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let Some((head, value)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let name = head.lines().find_map(|l| {
            let lower = l.to_ascii_lowercase();
            if !lower.starts_with("content-disposition:") || lower.contains("filename=") {
                return None;
            }
            let idx = lower.find("name=\"")?;
            let rest = &l[idx + 6..];
            rest.split_once('"').map(|(n, _)| n.to_string())
        });
        if let Some(name) = name {
            out.push((
                name,
                value.strip_suffix("\r\n").unwrap_or(value).to_string(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(ct: Option<&str>, body: &str) -> Result<Vec<String>, TokenError> {
        fields(
            ct,
            &Bytes::from(body.to_string()),
            &["username", "password"],
        )
    }

    #[test]
    fn json_form_and_multipart() {
        assert_eq!(
            f(
                Some("application/json"),
                r#"{"username":" a ","password":5}"#
            )
            .unwrap(),
            vec!["a", "5"]
        );
        assert_eq!(
            f(
                Some("application/x-www-form-urlencoded; charset=utf-8"),
                "username=a&password=p%20w"
            )
            .unwrap(),
            vec!["a", "p w"]
        );
        let mp = "--XX\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\nbob\r\n--XX\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\npw\r\n--XX--\r\n";
        assert_eq!(
            f(Some("multipart/form-data; boundary=XX"), mp).unwrap(),
            vec!["bob", "pw"]
        );
    }

    #[test]
    fn drf_errors() {
        let e = f(
            Some("application/json"),
            r#"{"username":"","password":null}"#,
        )
        .unwrap_err();
        assert!(
            matches!(e, TokenError::Fields(ref v) if v == &vec![("username", "This field may not be blank."), ("password", "This field may not be null.")])
        );
        assert!(matches!(f(None, ""), Err(TokenError::Fields(v)) if v.len() == 2));
        assert!(
            matches!(f(Some("application/json"), "[1]"), Err(TokenError::NonField(m)) if m == "Invalid data. Expected a dictionary, but got list.")
        );
        assert!(matches!(
            f(Some("application/json"), "{"),
            Err(TokenError::ParseError(_))
        ));
        assert!(
            matches!(f(Some("text/plain"), "x"), Err(TokenError::UnsupportedMediaType(m)) if m == "text/plain")
        );
        assert!(
            matches!(f(Some("application/json"), r#"{"username":true,"password":"x"}"#), Err(TokenError::Fields(v)) if v == vec![("username", "Not a valid string.")])
        );
    }
}
