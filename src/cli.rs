//! The command line: plain data for clap, no behaviour.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// A single-binary front door for an application server: TLS, static
/// files, and a streaming reverse proxy, configured by one TOML file.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Path to the TOML config file.
    #[arg(
        short,
        long,
        env = "GATEWAY_CONFIG",
        default_value = "./gateway.toml",
        value_name = "PATH"
    )]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (SIGTERM/SIGINT drain and exit, SIGHUP reloads).
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Load and validate the config, print a summary; exit 2 on any error.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Exit 0 when the running gateway's health endpoint answers 200, else 1
    /// (for Docker HEALTHCHECK in images without curl).
    Healthcheck {
        /// Config to find a local listener and the health path in.
        #[arg(
            short,
            long,
            env = "GATEWAY_CONFIG",
            default_value = "./gateway.toml",
            value_name = "PATH",
            conflicts_with = "url"
        )]
        config: PathBuf,
        /// Probe this URL instead of the config's listener (takes
        /// precedence), e.g. http://127.0.0.1:8080/healthz.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        timeout: u64,
    },
    /// Read a password (one line on stdin; on a terminal, prompted twice
    /// without echo) and print its argon2id PHC string.
    HashPassword,
    /// Manage the users file of [tokens.credentials].
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Generate a signing key pair: DIR/private.pem, DIR/public.pem and
    /// DIR/jwks.json (with a kid).
    Keygen {
        /// ES256, ES384, RS256 or EdDSA.
        #[arg(long, value_name = "ALG")]
        alg: String,
        /// Directory to write into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Key id for jwks.json (default: the RFC 7638 thumbprint).
        #[arg(long)]
        kid: Option<String>,
    },
    /// Logins (token families) in the store: list them, revoke them. Running
    /// gateways refuse a revoked login's access tokens within seconds.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Login rate-limit lockouts in the store: list them, clear one.
    Lockouts {
        #[command(subcommand)]
        command: LockoutsCommand,
    },
    /// Automatic HTTPS ([tls.acme]): the cached certificate, and renewing it now.
    Acme {
        #[command(subcommand)]
        command: AcmeCommand,
    },
    /// Mint an access token with the config's signing key and print it.
    Token {
        #[command(flatten)]
        config: ConfigArg,
        /// The user id claim's value.
        #[arg(long, value_name = "ID")]
        user_id: String,
        /// Extra claims, KEY=VALUE (VALUE as JSON when it parses, e.g.
        /// roles=["staff"], else a string). Repeatable.
        #[arg(long, value_name = "KEY=VALUE")]
        claim: Vec<String>,
        /// Lifetime (default: tokens.access_ttl, or 5m).
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read like hash-password.
    Add {
        /// The username.
        name: String,
        #[arg(long, value_name = "FILE")]
        users_file: PathBuf,
        /// Defaults to one more than the largest numeric id in the file.
        #[arg(long, value_name = "ID")]
        user_id: Option<String>,
        /// Extra claims, KEY=VALUE (VALUE as JSON when it parses). Repeatable.
        #[arg(long, value_name = "KEY=VALUE")]
        claim: Vec<String>,
        /// Create the user inactive.
        #[arg(long)]
        inactive: bool,
    },
    /// Import users exported with `manage.py dumpdata auth.user` (their
    /// Django password hashes keep working).
    ImportDjango {
        /// The dumpdata JSON file ("-" for stdin).
        dump: PathBuf,
        #[arg(long, value_name = "FILE")]
        users_file: PathBuf,
        /// Django user fields to carry as token claims, e.g.
        /// --claims is_staff,email (default: none, as simplejwt).
        #[arg(long, value_delimiter = ',', value_name = "FIELDS")]
        claims: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// A user's sessions that have not ended (revoked ones included).
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, value_name = "ID")]
        user_id: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke every session of a user, or one session by its id.
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(
            long,
            value_name = "ID",
            required_unless_present = "sid",
            conflicts_with = "sid"
        )]
        user_id: Option<String>,
        /// A session id (the `sid` claim of its tokens).
        #[arg(long, value_name = "SID")]
        sid: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AcmeCommand {
    /// The cached certificate: names, expiry and when it will be renewed.
    Status {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Ask the running gateway to renew now (it picks this up within a
    /// second; the new certificate is swapped in without dropping connections).
    Renew {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum LockoutsCommand {
    /// Usernames and addresses at their failed-login limit, and for how long.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Also counters below their limit.
        #[arg(long)]
        all: bool,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Forget a username's failed logins (or an address's, with --address).
    Clear {
        #[command(flatten)]
        config: ConfigArg,
        /// The username (with --address: the client address).
        name: String,
        /// NAME is a client address, not a username.
        #[arg(long)]
        address: bool,
    },
}
