//! Value types parsed while the TOML is deserialized: durations ("500ms",
//! "30s", "5m", "1h", "1d"), byte sizes (512, "512", "16KiB", "10MiB") and
//! secrets ("env:NAME", "file:PATH" or the literal value).
//!
//! Parsing inside `Deserialize` lets toml attach the value's span to the
//! error, so a bad value is reported with its line.

use serde::{de, Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// A duration written the human way: "500ms", "30s", "5m", "1h", "1d".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(de::Error::custom)
    }
}

/// Parses "500ms", "30s", "5m", "1h", "1d" and sums of them ("1h30m").
/// Only these units: months, years and anything a human could misread
/// ("5M": minutes or months?) are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        format!(
            "invalid duration {s:?} ({why}); write it as \"500ms\", \"30s\", \"5m\", \"1h\" or \"1d\" (units ms, s, m, h, d)"
        )
    };
    let text = s.trim();
    if text.is_empty() {
        return Err(bad("empty"));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("number too large"))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            "" => return Err(bad("a unit is needed")),
            other => return Err(bad(&format!("unknown unit {other:?}"))),
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// A byte count: an integer, or a string such as "512", "16KiB", "10MiB".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte size: an integer or a string such as \"16KiB\" or \"10MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a byte size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses "512", "16KiB", "10MiB", "1GiB" ("KB" is 1000, "KiB" 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::parse_size(s.trim()).map_err(|e| {
        format!("invalid size {s:?} ({e}); write it as bytes or as \"16KiB\", \"10MiB\"")
    })
}

/// A secret value as written in the file: `env:NAME`, `file:PATH`, or literal.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(String),
    Literal(String),
}

impl SecretSource {
    pub fn parse(s: &str) -> Self {
        if let Some(name) = s.strip_prefix("env:") {
            SecretSource::Env(name.to_string())
        } else if let Some(path) = s.strip_prefix("file:") {
            SecretSource::File(path.to_string())
        } else {
            SecretSource::Literal(s.to_string())
        }
    }

    /// Reads the secret; relative file paths resolve against `base`.
    pub fn resolve(&self, base: &std::path::Path) -> Result<String, String> {
        match self {
            SecretSource::Env(name) => {
                std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
            }
            SecretSource::File(path) => {
                let p = base.join(path);
                std::fs::read_to_string(&p)
                    .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                    .map_err(|e| format!("cannot read {}: {e}", p.display()))
            }
            SecretSource::Literal(v) => Ok(v.clone()),
        }
    }
}

// SECURITY: never print a secret's value, only where it comes from.
impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(n) => write!(f, "env:{n}"),
            SecretSource::File(p) => write!(f, "file:{p}"),
            SecretSource::Literal(_) => f.write_str("<literal>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for misread in ["5M", "1y", "2months", "3w", "10", "5 min", "1.5h"] {
            let e = parse_duration(misread).unwrap_err();
            assert!(e.contains("units ms, s, m, h, d"), "{misread}: {e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn secrets_never_debug_print_literals() {
        let s = SecretSource::parse("hunter2");
        assert_eq!(format!("{s:?}"), "<literal>");
        assert_eq!(SecretSource::parse("env:X"), SecretSource::Env("X".into()));
        assert_eq!(
            SecretSource::parse("file:k"),
            SecretSource::File("k".into())
        );
    }
}
