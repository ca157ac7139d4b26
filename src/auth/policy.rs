//! Route policy: methods, then required / optional / none, then claim
//! conditions.

use http::Method;
use serde_json::{Map, Value};

use crate::config::{ClaimRule, RoutePolicy};

/// Whether `method` is allowed; GET allows HEAD too.
pub fn method_allowed(policy: &RoutePolicy, method: &Method) -> bool {
    match &policy.methods {
        None => true,
        Some(list) => {
            list.contains(method) || (*method == Method::HEAD && list.contains(&Method::GET))
        }
    }
}

/// The Allow header value for a 405.
pub fn allow_header(policy: &RoutePolicy) -> String {
    let mut names: Vec<&str> = policy
        .methods
        .iter()
        .flatten()
        .map(Method::as_str)
        .collect();
    if names.contains(&"GET") && !names.contains(&"HEAD") {
        names.push("HEAD");
    }
    names.join(", ")
}

/// Whether the claims satisfy every rule.
pub fn claims_satisfy(rules: &[ClaimRule], claims: &Map<String, Value>) -> bool {
    rules.iter().all(|rule| {
        let Some(v) = claims.get(&rule.claim) else {
            return false;
        };
        let has = |s: &str| rule.any_of.iter().any(|want| want == s);
        match v {
            Value::Array(items) => items.iter().any(|i| match i {
                Value::String(s) => has(s),
                other => has(&other.to_string()),
            }),
            // Space-separated lists, as OAuth's `scope`.
            Value::String(s) => s.split_whitespace().any(has),
            Value::Null | Value::Object(_) => false,
            other => has(&other.to_string()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(claim: &str, vals: &[&str]) -> ClaimRule {
        ClaimRule {
            claim: claim.into(),
            any_of: vals.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn claim_shapes() {
        let c =
            json!({"roles": ["staff", "ops"], "scope": "read write", "level": 3, "admin": true})
                .as_object()
                .unwrap()
                .clone();
        assert!(claims_satisfy(&[rule("roles", &["staff"])], &c));
        assert!(claims_satisfy(&[rule("scope", &["write"])], &c));
        assert!(claims_satisfy(&[rule("level", &["3"])], &c));
        assert!(claims_satisfy(&[rule("admin", &["true"])], &c));
        assert!(!claims_satisfy(&[rule("roles", &["admin"])], &c));
        assert!(!claims_satisfy(&[rule("missing", &["x"])], &c));
        assert!(!claims_satisfy(
            &[rule("roles", &["staff"]), rule("scope", &["admin"])],
            &c
        ));
    }

    #[test]
    fn methods() {
        let p = RoutePolicy {
            auth: crate::config::AuthMode::None,
            require: vec![],
            methods: Some(vec![Method::GET, Method::POST]),
            allow_encoded_slash: false,
        };
        assert!(method_allowed(&p, &Method::HEAD));
        assert!(!method_allowed(&p, &Method::DELETE));
        assert_eq!(allow_header(&p), "GET, POST, HEAD");
    }
}
