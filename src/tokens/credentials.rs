//! Who may log in: a users file (`[[user]]` entries with PHC password
//! hashes, re-read on reload), or the application itself through a POST to
//! an internal endpoint, so an existing app keeps owning its users.

use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::password;
use crate::proxy::Upstream;

/// A user as the token routes see one.
#[derive(Debug, Clone)]
pub struct UserInfo {
    pub user_id: String,
    pub claims: Map<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{path}: cannot read users file")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("credential service unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub username: String,
    pub password: String,
    pub user_id: UserId,
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default)]
    pub claims: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// An integer or a string in the file; tokens carry it as a string.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum UserId {
    Int(i64),
    Str(String),
}

impl UserId {
    pub fn as_string(&self) -> String {
        match self {
            UserId::Int(i) => i.to_string(),
            UserId::Str(s) => s.clone(),
        }
    }
}

/// The users file, indexed.
#[derive(Debug)]
pub struct Users {
    by_name: HashMap<String, Arc<UserEntry>>,
    by_id: HashMap<String, Arc<UserEntry>>,
    /// Verified against for unknown users, so they cost the same time as a
    /// wrong password (no user enumeration by timing): a hash of the users
    /// file's most common scheme and cost.
    dummy_hash: String,
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, CredentialsError> {
        let name = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            // No file yet: no users (`gateway user add` creates it).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(CredentialsError::Read { path: name, source }),
        };
        Users::parse(&name, &text)
    }

    pub fn parse(name: &str, text: &str) -> Result<Users, CredentialsError> {
        let file: UsersFile = toml::from_str(text).map_err(|e| CredentialsError::Parse {
            path: name.to_string(),
            message: e.to_string().replace('\n', " "),
        })?;
        let mut by_name = HashMap::new();
        let mut by_id = HashMap::new();
        for (i, u) in file.user.into_iter().enumerate() {
            password::check_format(&u.password).map_err(|e| CredentialsError::Parse {
                path: name.to_string(),
                message: format!("user[{i}] ({}): password: {e}", u.username),
            })?;
            let u = Arc::new(u);
            if by_name.insert(u.username.clone(), u.clone()).is_some() {
                return Err(CredentialsError::Parse {
                    path: name.to_string(),
                    message: format!("user[{i}]: duplicate username {:?}", u.username),
                });
            }
            if by_id.insert(u.user_id.as_string(), u.clone()).is_some() {
                return Err(CredentialsError::Parse {
                    path: name.to_string(),
                    message: format!("user[{i}]: duplicate user_id {:?}", u.user_id.as_string()),
                });
            }
        }
        let dummy_hash = match most_common_shape(by_name.values()) {
            // SECURITY: an unknown name is verified against a stored hash
            // of the commonest shape, so it costs what a wrong password for
            // most users costs (users imported from Django keep pbkdf2 at
            // Django's cost, far above argon2's). The result is discarded.
            Some(stored) => stored,
            None => {
                password::hash("gateway-dummy-password").map_err(|e| CredentialsError::Parse {
                    path: name.to_string(),
                    message: e.to_string(),
                })?
            }
        };
        Ok(Users {
            by_name,
            by_id,
            dummy_hash,
        })
    }

    /// Checks a password (blocking: argon2 is deliberately slow).
    pub fn authenticate(&self, username: &str, pw: &str) -> Option<UserInfo> {
        match self.by_name.get(username) {
            Some(u) => {
                let ok = password::verify(pw, &u.password);
                // Inactive users are refused exactly like wrong passwords.
                (ok && u.active).then(|| info(u))
            }
            None => {
                let _ = password::verify(pw, &self.dummy_hash);
                None
            }
        }
    }

    pub fn by_id(&self, user_id: &str) -> Option<(bool, UserInfo)> {
        self.by_id.get(user_id).map(|u| (u.active, info(u)))
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// A stored hash of the most common cost shape (ties: the lexically
/// smallest shape).
fn most_common_shape<'a>(users: impl Iterator<Item = &'a Arc<UserEntry>>) -> Option<String> {
    let mut shapes: std::collections::BTreeMap<String, (usize, &str)> =
        std::collections::BTreeMap::new();
    for u in users {
        let e = shapes
            .entry(password::cost_shape(&u.password))
            .or_insert((0, &u.password));
        e.0 += 1;
    }
    let mut best: Option<(usize, &str)> = None;
    for (count, stored) in shapes.into_values() {
        if best.is_none_or(|(n, _)| count > n) {
            best = Some((count, stored));
        }
    }
    best.map(|(_, stored)| stored.to_string())
}

fn info(u: &UserEntry) -> UserInfo {
    UserInfo {
        user_id: u.user_id.as_string(),
        claims: u.claims.clone(),
    }
}

/// Where credentials are checked.
pub enum Credentials {
    File(Arc<Users>),
    Upstream {
        upstream: Arc<Upstream>,
        path: String,
        timeout: Duration,
    },
}

/// A user found again at refresh time.
pub enum Lookup {
    Active(UserInfo),
    /// Inactive or removed since login.
    Gone,
    /// The credential source cannot look users up by id (delegation).
    NotChecked,
}

impl Credentials {
    /// `Ok(None)`: wrong credentials (or inactive user).
    pub async fn authenticate(
        &self,
        username: &str,
        pw: &str,
    ) -> Result<Option<UserInfo>, CredentialsError> {
        match self {
            Credentials::File(users) => {
                let users = users.clone();
                let (u, p) = (username.to_string(), pw.to_string());
                tokio::task::spawn_blocking(move || users.authenticate(&u, &p))
                    .await
                    .map_err(|e| CredentialsError::Unavailable(Box::new(e)))
            }
            Credentials::Upstream {
                upstream,
                path,
                timeout,
            } => delegate(upstream, path, *timeout, username, pw).await,
        }
    }

    pub fn lookup(&self, user_id: &str) -> Lookup {
        match self {
            Credentials::File(users) => match users.by_id(user_id) {
                Some((true, info)) => Lookup::Active(info),
                _ => Lookup::Gone,
            },
            Credentials::Upstream { .. } => Lookup::NotChecked,
        }
    }
}

#[derive(Deserialize)]
struct DelegateAnswer {
    user_id: Value,
    #[serde(default)]
    claims: Map<String, Value>,
}

/// POSTs {"username","password"} to the app: 2xx with {"user_id", "claims"}
/// is a login, 401/403 is wrong credentials, anything else is unavailable.
async fn delegate(
    up: &Upstream,
    path: &str,
    timeout: Duration,
    username: &str,
    pw: &str,
) -> Result<Option<UserInfo>, CredentialsError> {
    let index = up
        .pick_index()
        .ok_or_else(|| unavailable("no healthy server in the upstream".into()))?;
    let server = up
        .servers()
        .get(index)
        .ok_or_else(|| unavailable("no healthy server in the upstream".into()))?;
    let body = serde_json::json!({"username": username, "password": pw}).to_string();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"POST ");
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(server.host.as_bytes());
    head.extend_from_slice(
        b"\r\ncontent-type: application/json\r\naccept: application/json\r\ncontent-length: ",
    );
    head.extend_from_slice(body.len().to_string().as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    let mut timer = crate::proxy::exchange::HeadTimer::default();
    let exchanged = crate::proxy::exchange::exchange(
        up,
        index,
        &http::Method::POST,
        &head,
        crate::proxy::exchange::ReqBody::<crate::proxy::exchange::NoSource>::Whole(body.as_bytes()),
        false,
        &mut timer,
    );
    let got = tokio::time::timeout(timeout, exchanged)
        .await
        .map_err(|_| unavailable("credential check timed out".into()))?
        .map_err(|f| unavailable(Box::new(f.error)))?;
    let pool = match up.servers().get(got.server) {
        Some(s) => s.pool.clone(),
        None => return Err(unavailable("no healthy server in the upstream".into())),
    };
    let resp = crate::proxy::h1client::response(got, false, &pool)
        .map_err(|e| unavailable(Box::new(e)))?;
    let status = resp.status();
    if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(unavailable(
            format!("credential check answered {status}").into(),
        ));
    }
    let bytes = tokio::time::timeout(timeout, read_answer(resp.into_body()))
        .await
        .map_err(|_| unavailable("credential check timed out".into()))??;
    let answer: DelegateAnswer =
        serde_json::from_slice(&bytes).map_err(|e| unavailable(Box::new(e)))?;
    let user_id = match answer.user_id {
        Value::String(s) if !s.is_empty() => s,
        Value::Number(n) => n.to_string(),
        _ => return Err(unavailable("credential check answered no user_id".into())),
    };
    Ok(Some(UserInfo {
        user_id,
        claims: answer.claims,
    }))
}

/// The app's answer, at most 64 KiB.
async fn read_answer(mut body: crate::body::Body) -> Result<Vec<u8>, CredentialsError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(unavailable)?.into_data() {
            if out.len() + data.len() > 64 * 1024 {
                return Err(unavailable("credential check answer too large".into()));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

fn unavailable(e: Box<dyn std::error::Error + Send + Sync>) -> CredentialsError {
    CredentialsError::Unavailable(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file() {
        let h = password::hash("pw").unwrap();
        let text = format!(
            "[[user]]\nusername = \"alice\"\npassword = \"{h}\"\nuser_id = 1\nclaims = {{ roles = [\"staff\"] }}\n\n[[user]]\nusername = \"bob\"\npassword = \"{h}\"\nuser_id = \"b-2\"\nactive = false\n"
        );
        let users = Users::parse("users.toml", &text).unwrap();
        let a = users.authenticate("alice", "pw").unwrap();
        assert_eq!(a.user_id, "1");
        assert_eq!(a.claims["roles"][0], "staff");
        assert!(users.authenticate("alice", "nope").is_none());
        assert!(users.authenticate("bob", "pw").is_none(), "inactive");
        assert!(users.authenticate("carol", "pw").is_none());
        assert!(matches!(users.by_id("b-2"), Some((false, _))));
    }

    #[test]
    fn unknown_users_cost_what_the_commonest_scheme_costs() {
        let argon = password::hash("pw").unwrap();
        let text = format!(
            "[[user]]\nusername = \"a\"\npassword = \"{argon}\"\nuser_id = 1\n\
             [[user]]\nusername = \"b\"\npassword = \"pbkdf2_sha256$870000$s1$aGFzaA==\"\nuser_id = 2\n\
             [[user]]\nusername = \"c\"\npassword = \"pbkdf2_sha256$870000$s2$aGFzaA==\"\nuser_id = 3\n"
        );
        let users = Users::parse("u.toml", &text).unwrap();
        assert_eq!(
            password::cost_shape(&users.dummy_hash),
            "pbkdf2_sha256$870000"
        );
        let none = Users::parse("u.toml", "").unwrap();
        assert!(none.dummy_hash.starts_with("$argon2id$"));
    }

    #[test]
    fn bad_users_files_name_the_problem() {
        let e = Users::parse(
            "u.toml",
            "[[user]]\nusername = \"a\"\npassword = \"plain\"\nuser_id = 1\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("user[0] (a): password"), "{e}");
        let e = Users::parse("u.toml", "[[user]]\nname = \"a\"\n").unwrap_err();
        assert!(e.to_string().starts_with("u.toml: "), "{e}");
    }
}
