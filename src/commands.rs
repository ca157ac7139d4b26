//! The operator subcommands: hash-password, user add / import-django,
//! keygen and token. Errors are printed by main and exit 2.

use anyhow::{anyhow, bail, Context};
use serde_json::{Map, Value};
use std::io::{BufRead, IsTerminal};
use std::path::Path;

use gateway::config::{self, JwtAlg};
use gateway::tokens::{issue, jwks, password};

/// One line from stdin, or on a terminal a no-echo prompt, twice.
pub fn read_password() -> anyhow::Result<String> {
    let pw = if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password("Password: ")?;
        let b = rpassword::prompt_password("Password (again): ")?;
        if a != b {
            bail!("the passwords do not match");
        }
        a
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if pw.is_empty() {
        bail!("empty password");
    }
    Ok(pw)
}

pub fn hash_password() -> anyhow::Result<()> {
    let pw = read_password()?;
    println!("{}", password::hash(&pw)?);
    Ok(())
}

/// `KEY=VALUE` pairs; VALUE as JSON when it parses, else a string.
fn parse_claims(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| anyhow!("--claim {p:?}: expected KEY=VALUE"))?;
        if k.is_empty() {
            bail!("--claim {p:?}: empty key");
        }
        let value =
            serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.to_string()));
        out.insert(k.to_string(), value);
    }
    Ok(out)
}

fn user_table(
    username: &str,
    hash: &str,
    user_id: &str,
    active: bool,
    claims: &Map<String, Value>,
) -> anyhow::Result<toml::Table> {
    let mut t = toml::Table::new();
    t.insert("username".into(), toml::Value::String(username.into()));
    t.insert("password".into(), toml::Value::String(hash.into()));
    // Numeric ids stay numbers in the file, as an operator would write them.
    let id = match user_id.parse::<i64>() {
        Ok(n) => toml::Value::Integer(n),
        Err(_) => toml::Value::String(user_id.into()),
    };
    t.insert("user_id".into(), id);
    t.insert("active".into(), toml::Value::Boolean(active));
    if !claims.is_empty() {
        let v = toml::Value::try_from(claims).context("claims cannot be written as TOML")?;
        t.insert("claims".into(), v);
    }
    Ok(t)
}

fn render(users: Vec<toml::Table>) -> anyhow::Result<String> {
    let mut doc = toml::Table::new();
    doc.insert(
        "user".into(),
        toml::Value::Array(users.into_iter().map(toml::Value::Table).collect()),
    );
    Ok(toml::to_string(&doc)?)
}

/// The users already in the file (as raw tables, to keep what we do not model).
fn existing_users(path: &Path) -> anyhow::Result<Vec<toml::Table>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    // Validate with the same parser the gateway uses.
    gateway::tokens::credentials::Users::parse(&path.display().to_string(), &text)?;
    let doc: toml::Table = toml::from_str(&text)?;
    Ok(match doc.get("user") {
        Some(toml::Value::Array(list)) => {
            list.iter().filter_map(|u| u.as_table().cloned()).collect()
        }
        _ => vec![],
    })
}

/// Writes a file that holds secrets (password hashes, private keys) with
/// mode 0600, atomically.
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    gateway::files::write_private(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn user_add(
    name: &str,
    users_file: &Path,
    user_id: Option<String>,
    claims: &[String],
    inactive: bool,
) -> anyhow::Result<()> {
    let mut users = existing_users(users_file)?;
    if users
        .iter()
        .any(|u| u.get("username").and_then(toml::Value::as_str) == Some(name))
    {
        bail!("{}: user {name:?} already exists", users_file.display());
    }
    let id_of = |u: &toml::Table| match u.get("user_id") {
        Some(toml::Value::Integer(i)) => i.to_string(),
        Some(toml::Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    let user_id = match user_id {
        Some(id) => id,
        None => (users
            .iter()
            .filter_map(|u| id_of(u).parse::<i64>().ok())
            .max()
            .unwrap_or(0)
            + 1)
        .to_string(),
    };
    if users.iter().any(|u| id_of(u) == user_id) {
        bail!(
            "{}: user_id {user_id:?} already exists",
            users_file.display()
        );
    }
    let claims = parse_claims(claims)?;
    let pw = read_password()?;
    users.push(user_table(
        name,
        &password::hash(&pw)?,
        &user_id,
        !inactive,
        &claims,
    )?);
    write_secret(users_file, &render(users)?)?;
    eprintln!(
        "added user {name:?} (user_id {user_id}) to {}",
        users_file.display()
    );
    Ok(())
}

pub fn import_django(
    dump: &Path,
    users_file: &Path,
    claim_fields: &[String],
) -> anyhow::Result<()> {
    let text = if dump == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        s
    } else {
        std::fs::read_to_string(dump).with_context(|| format!("cannot read {}", dump.display()))?
    };
    let rows: Vec<Value> = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a dumpdata JSON list", dump.display()))?;
    let mut users = existing_users(users_file)?;
    let (mut added, mut updated) = (0, 0);
    for row in rows {
        if row.get("model").and_then(Value::as_str) != Some("auth.user") {
            continue;
        }
        let fields = row
            .get("fields")
            .and_then(Value::as_object)
            .ok_or_else(|| anyhow!("auth.user row without fields"))?;
        let username = fields
            .get("username")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("auth.user row without username"))?;
        let hash = fields
            .get("password")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let pk = match row.get("pk") {
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) => s.clone(),
            _ => bail!("user {username:?} has no pk"),
        };
        if password::check_format(hash).is_err() {
            // Unusable passwords ("!...") and unknown hashers cannot log in.
            eprintln!("skipping {username:?}: unusable or unsupported password hash");
            continue;
        }
        let active = fields
            .get("is_active")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let mut claims = Map::new();
        for f in claim_fields {
            if let Some(v) = fields.get(f) {
                claims.insert(f.clone(), v.clone());
            }
        }
        let table = user_table(username, hash, &pk, active, &claims)?;
        match users
            .iter_mut()
            .find(|u| u.get("username").and_then(toml::Value::as_str) == Some(username))
        {
            Some(existing) => {
                *existing = table;
                updated += 1;
            }
            None => {
                users.push(table);
                added += 1;
            }
        }
    }
    let rendered = render(users)?;
    gateway::tokens::credentials::Users::parse(&users_file.display().to_string(), &rendered)?;
    write_secret(users_file, &rendered)?;
    eprintln!("{}: {added} added, {updated} updated", users_file.display());
    Ok(())
}

pub fn keygen(alg: &str, out: &Path, kid: Option<String>) -> anyhow::Result<()> {
    let alg = JwtAlg::from_name(alg)
        .filter(|a| {
            matches!(
                a,
                JwtAlg::ES256 | JwtAlg::ES384 | JwtAlg::RS256 | JwtAlg::EdDSA
            )
        })
        .ok_or_else(|| anyhow!("--alg {alg:?}: expected ES256, ES384, RS256 or EdDSA"))?;
    let (private_pem, public_pem) = match alg {
        JwtAlg::RS256 => {
            use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
            let key = rsa::RsaPrivateKey::new(&mut argon2::password_hash::rand_core::OsRng, 2048)?;
            let private = key.to_pkcs8_pem(LineEnding::LF)?.to_string();
            let public = key.to_public_key().to_public_key_pem(LineEnding::LF)?;
            (private, public)
        }
        JwtAlg::EdDSA => ed25519_pems()?,
        _ => {
            let a = match alg {
                JwtAlg::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
                _ => &rcgen::PKCS_ECDSA_P384_SHA384,
            };
            let kp = rcgen::KeyPair::generate_for(a)?;
            (kp.serialize_pem(), kp.public_key_pem())
        }
    };
    let mut jwk = jwks::public_jwk(alg, private_pem.as_bytes()).map_err(|e| anyhow!(e))?;
    let kid = kid.unwrap_or_else(|| jwks::thumbprint(&jwk));
    jwk.insert("kid".into(), Value::String(kid.clone()));
    jwk.insert("alg".into(), Value::String(alg.name().into()));
    jwk.insert("use".into(), Value::String("sig".into()));
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let private_path = out.join("private.pem");
    write_secret(&private_path, &private_pem)?;
    std::fs::write(out.join("public.pem"), public_pem)?;
    std::fs::write(
        out.join("jwks.json"),
        serde_json::to_string_pretty(&serde_json::json!({"keys": [jwk]}))? + "\n",
    )?;
    eprintln!(
        "wrote {0}/private.pem, {0}/public.pem and {0}/jwks.json (kid {kid})",
        out.display()
    );
    Ok(())
}

/// An Ed25519 key pair as PEM: the private key in PKCS#8 v1 (RFC 8410),
/// which OpenSSL 3.0 and Python's cryptography read; the v2 form (with the
/// public key embedded) that ring and rcgen write, they refuse.
fn ed25519_pems() -> anyhow::Result<(String, String)> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    use ring::signature::KeyPair;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| anyhow!("no randomness for the key"))?;
    let mut pkcs8 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    pkcs8.extend_from_slice(&seed);
    let kp = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
        .map_err(|e| anyhow!("Ed25519 key rejected: {e}"))?;
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(kp.public_key().as_ref());
    let pem = |label: &str, der: &[u8]| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    };
    Ok((pem("PRIVATE KEY", &pkcs8), pem("PUBLIC KEY", &spki)))
}

pub fn token(
    config_path: &Path,
    user_id: &str,
    claims: &[String],
    ttl: Option<&str>,
) -> anyhow::Result<()> {
    let cfg = config::load(config_path)?;
    let jwt = cfg
        .jwt
        .as_ref()
        .ok_or_else(|| anyhow!("{}: no [jwt] section to sign with", config_path.display()))?;
    let tokens = cfg
        .tokens
        .clone()
        .unwrap_or_else(|| config::TokensConfig::defaults(cfg.base_dir()));
    let signer = issue::Signer::new(jwt, &tokens)?;
    let ttl = match ttl {
        Some(t) => config::values::parse_duration(t).map_err(|e| anyhow!("--ttl: {e}"))?,
        None => tokens.access_ttl,
    };
    let extra = parse_claims(claims)?;
    let now = gateway::tokens::unix_now();
    let c = issue::Claims {
        token_type: "access",
        exp: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        iat: now,
        jti: issue::new_jti(),
        user_id_claim: &jwt.user_id_claim,
        user_id,
        extra: &extra,
        sid: None,
        audience: &jwt.audience,
        issuer: jwt.issuer.as_deref(),
    };
    println!("{}", signer.sign(&c.to_map())?);
    Ok(())
}
