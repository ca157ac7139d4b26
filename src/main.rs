//! The `gateway` binary: parse the command line, load the config, run the
//! subcommand. The only home of anyhow: errors here are printed and the
//! process exits.

mod cli;
mod commands;
mod operator;

use anyhow::Context;
use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;

use cli::{Cli, Command, UserCommand};
use gateway::config::{self, Config, RouteTarget};
use gateway::{handler, healthcheck, server, telemetry, tls};

fn main() -> ExitCode {
    gateway::alloc::fixed_mmap_threshold();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(&config.config),
        Command::Check { config } => check(&config.config),
        Command::Healthcheck {
            config,
            url,
            timeout,
        } => health(&config, url.as_deref(), timeout),
        Command::HashPassword => admin(commands::hash_password()),
        Command::User { command } => admin(match command {
            UserCommand::Add {
                name,
                users_file,
                user_id,
                claim,
                inactive,
            } => commands::user_add(&name, &users_file, user_id, &claim, inactive),
            UserCommand::ImportDjango {
                dump,
                users_file,
                claims,
            } => commands::import_django(&dump, &users_file, &claims),
        }),
        Command::Keygen { alg, out, kid } => admin(commands::keygen(&alg, &out, kid)),
        Command::Sessions { command } => admin(operator::sessions(command)),
        Command::Lockouts { command } => admin(operator::lockouts(command)),
        Command::Acme { command } => admin(acme_command(command)),
        Command::Token {
            config,
            user_id,
            claim,
            ttl,
        } => admin(commands::token(
            &config.config,
            &user_id,
            &claim,
            ttl.as_deref(),
        )),
    }
}

/// Operator commands: errors printed, exit 2.
fn admin(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `gateway acme status|renew`.
fn acme_command(cmd: cli::AcmeCommand) -> anyhow::Result<()> {
    let path = match &cmd {
        cli::AcmeCommand::Status { config } | cli::AcmeCommand::Renew { config } => &config.config,
    };
    let config = config::load(path)?;
    let Some(acme) = config.tls.as_ref().and_then(|t| t.acme.as_ref()) else {
        anyhow::bail!("{}: no [tls.acme] section", path.display());
    };
    match cmd {
        cli::AcmeCommand::Status { .. } => {
            println!(
                "{}: {}",
                acme.domains.join(", "),
                gateway::acme::describe(acme)
            );
        }
        cli::AcmeCommand::Renew { .. } => {
            let marker = gateway::acme::request_renewal(acme)?;
            println!(
                "renewal requested ({}): the running gateway orders a new certificate within a second",
                marker.display()
            );
        }
    }
    Ok(())
}

/// Exit code for a configuration that cannot be used (as `check`).
const EXIT_CONFIG: u8 = 2;

fn serve(path: &std::path::Path) -> ExitCode {
    // Validate everything `check` does (certificates and static roots
    // included) before binding any port: a bad config is a usage error.
    let config = match check_config(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(&config.log);
    raise_descriptor_limit(config.server.max_connections);
    // One worker: a single-threaded scheduler does the same work with fewer
    // atomics and no work-stealing bookkeeping (as one nginx worker).
    let mut rt = if config.server.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if config.server.workers > 1 {
        rt.worker_threads(config.server.workers);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not through tracing as well: one message, visible whatever
            // RUST_LOG says.
            eprintln!("gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard one (as Go and nginx's
/// `worker_rlimit_nofile` do): a distribution's 1,024 default would cap
/// `max_connections` at about 500 proxied connections, each needing a
/// client and an upstream descriptor. Warns when even the hard limit is
/// short of that.
fn raise_descriptor_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum {
        if limit.current.is_some_and(|soft| soft < hard) {
            limit.current = Some(hard);
            if let Err(e) = setrlimit(Resource::Nofile, limit) {
                tracing::warn!(error = %e, "cannot raise the open-file limit");
            }
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let needed = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_mul(2);
    if soft < needed {
        tracing::warn!(
            open_files = soft,
            max_connections,
            "the open-file limit is below 2 x max_connections: raise it (ulimit -n) or lower max_connections"
        );
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    if matches!(
        config.tls.as_ref().map(|t| &t.default),
        Some(config::CertSource::SelfSigned)
    ) {
        tracing::warn!("!!! tls.self_signed = true: serving a throwaway certificate for localhost. Development only: browsers and clients will not trust it !!!");
    }
    let listeners = server::Listeners::bind(&config).await?;
    let handle = server::start(config, listeners)
        .await
        .context("cannot start")?;
    // A drain cut short by the grace period is still a clean, intended exit.
    server::run_until_signalled(handle).await?;
    Ok(())
}

fn check(path: &std::path::Path) -> ExitCode {
    match check_config(path) {
        Ok(config) => {
            print!("{}", summary(&config));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Everything `serve` does before binding: parse, validate, load the
/// certificates and open the static roots.
fn check_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let config = config::load(path)?;
    if let Some(t) = &config.tls {
        // With ACME the certificates are the manager's, not files: an
        // empty set is checked here (the pending state).
        let acme = t
            .acme
            .as_ref()
            .map(|a| std::sync::Arc::new(tls::AcmeCerts::new(a.domains.clone())));
        if let Err(e) = tls::server_config(t, acme.as_ref()) {
            let at = e
                .path()
                .and_then(|p| tls_key_for(path, config.base_dir(), p))
                .unwrap_or_else(|| format!("{}: tls", path.display()));
            return Err(anyhow::Error::new(e).context(at));
        }
    }
    // Key and signer errors already name FILE:LINE: KEY; static roots do not.
    handler::AppState::new(config.clone(), &handler::Deps::in_memory()?).map_err(|e| match e {
        handler::StateError::StaticRoot { .. } => {
            anyhow::Error::new(e).context(format!("{}: routes", path.display()))
        }
        other => anyhow::Error::new(other),
    })?;
    Ok(config)
}

/// `FILE:LINE: KEY` of the `[tls]` entry that names `file`, so certificate
/// errors point at a line as every other config error does. The typed
/// config keeps no spans for these paths, so the file is read again here.
fn tls_key_for(
    config_path: &std::path::Path,
    base: &std::path::Path,
    file: &std::path::Path,
) -> Option<String> {
    use toml::Spanned;
    #[derive(serde::Deserialize)]
    struct Doc {
        tls: Option<Tls>,
    }
    #[derive(serde::Deserialize)]
    struct Tls {
        cert: Option<Spanned<String>>,
        key: Option<Spanned<String>>,
        #[serde(default)]
        sni: Vec<Sni>,
    }
    #[derive(serde::Deserialize)]
    struct Sni {
        cert: Spanned<String>,
        key: Spanned<String>,
    }
    let text = std::fs::read_to_string(config_path).ok()?;
    let tls = toml::from_str::<Doc>(&text).ok()?.tls?;
    let mut entries = vec![
        ("tls.key".to_string(), tls.key),
        ("tls.cert".to_string(), tls.cert),
    ];
    for (i, s) in tls.sni.into_iter().enumerate() {
        entries.push((format!("tls.sni[{i}].key"), Some(s.key)));
        entries.push((format!("tls.sni[{i}].cert"), Some(s.cert)));
    }
    entries.into_iter().find_map(|(key, value)| {
        let value = value?;
        if base.join(value.get_ref()) != file {
            return None;
        }
        let line = text[..value.span().start].matches('\n').count() + 1;
        Some(format!("{}:{line}: {key}", config_path.display()))
    })
}

fn summary(c: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{}: OK", c.path.display());
    let _ = writeln!(out, "listeners:");
    let scheme = if c.tls.is_some() { "https" } else { "http" };
    let _ = writeln!(
        out,
        "  {} ({scheme}, HTTP/1.1{})",
        c.server.listen,
        if c.tls.is_some() {
            " + HTTP/2"
        } else {
            " + h2c"
        }
    );
    if let Some(h) = c.server.http_listen {
        let what = if c.server.redirect_http {
            "redirects to https"
        } else {
            "serves the same routes"
        };
        let _ = writeln!(out, "  {h} (http, {what})");
    }
    if let Some(a) = c.tls.as_ref().and_then(|t| t.acme.as_ref()) {
        let _ = writeln!(
            out,
            "  acme: {} from {} ({}, cache {}): {}",
            a.domains.join(", "),
            a.directory,
            a.challenge.name(),
            a.cache.display(),
            gateway::acme::describe(a)
        );
    }
    let _ = writeln!(out, "  health: {}", c.server.health_path);
    match &c.admin {
        Some(a) => {
            let _ = writeln!(out, "  admin: {} (/metrics, /readyz)", a.listen);
        }
        None => {
            let _ = writeln!(out, "  admin: off");
        }
    }
    let _ = match &c.jwt {
        Some(j) => writeln!(
            out,
            "auth: on ({} key(s){})",
            j.keys.len(),
            if j.trusted_issuers.is_empty() {
                String::new()
            } else {
                format!(", {} trusted issuer(s)", j.trusted_issuers.len())
            }
        ),
        None => writeln!(out, "auth: off (no [jwt])"),
    };
    if let Some(t) = &c.tokens {
        let _ = writeln!(
            out,
            "tokens: access {}, refresh {}, session at most {}",
            humantime::format_duration(t.access_ttl),
            humantime::format_duration(t.refresh_ttl),
            humantime::format_duration(t.session_max)
        );
        let _ = match &t.credentials {
            config::CredentialsConfig::UsersFile(path) => {
                match gateway::tokens::credentials::Users::load(path) {
                    Ok(u) => writeln!(out, "users: {} in {}", u.len(), path.display()),
                    Err(_) => writeln!(out, "users: {} (unreadable)", path.display()),
                }
            }
            config::CredentialsConfig::Upstream { upstream, path, .. } => {
                writeln!(out, "users: checked by upstream {upstream} at {path}")
            }
        };
        let _ = writeln!(out, "token routes (answered by the gateway):");
        for (what, path) in [
            ("obtain", &t.obtain_path),
            ("refresh", &t.refresh_path),
            ("verify", &t.verify_path),
            ("blacklist", &t.blacklist_path),
            ("jwks", &t.jwks_path),
        ] {
            let _ = writeln!(out, "  {path:<24} {what}");
        }
        let _ = writeln!(out, "  store: {:?}", c.store.backend);
    }
    let _ = writeln!(out, "routes (match order):");
    for r in &c.routes {
        let auth = match r.policy.auth {
            config::AuthMode::Required => "auth required",
            config::AuthMode::Optional => "auth optional",
            config::AuthMode::None => "no auth",
        };
        let mut extra = String::new();
        if !r.policy.require.is_empty() {
            let rules: Vec<String> = r
                .policy
                .require
                .iter()
                .map(|c| format!("{} in [{}]", c.claim, c.any_of.join(", ")))
                .collect();
            let _ = write!(extra, ", require {}", rules.join(" and "));
        }
        if let Some(m) = &r.policy.methods {
            let names: Vec<&str> = m.iter().map(|m| m.as_str()).collect();
            let _ = write!(extra, ", methods {}", names.join(" "));
        }
        match &r.target {
            RouteTarget::Static(s) => {
                let _ = writeln!(
                    out,
                    "  {:<24} static {} ({auth}{extra})",
                    r.path,
                    s.root.display()
                );
            }
            RouteTarget::Upstream(u) => {
                let strip = if u.strip_prefix {
                    ", prefix stripped"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "  {:<24} upstream {} ({auth}{strip}{extra})",
                    r.path, u.upstream
                );
            }
        }
    }
    let _ = writeln!(out, "upstreams:");
    for (name, u) in &c.upstreams {
        let servers: Vec<String> = u.servers.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "  {name}: {} (connect {:?}, timeout {:?})",
            servers.join(", "),
            u.connect_timeout,
            u.timeout
        );
    }
    out
}

fn health(config_path: &std::path::Path, url: Option<&str>, timeout: u64) -> ExitCode {
    let target = match url {
        Some(u) => healthcheck::Target::from_url(u).map_err(|e| e.to_string()),
        None => config::load(config_path)
            .map(|c| healthcheck::Target::from_config(&c))
            .map_err(|e| gateway::response::error_chain(&e)),
    };
    // Exit 1, not 2, on a bad config too: Docker only knows healthy (0)
    // and unhealthy (1).
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    match healthcheck::probe(&target, Duration::from_secs(timeout.max(1))) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(code) => {
            eprintln!("healthcheck: status {code}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("healthcheck: {}", gateway::response::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
