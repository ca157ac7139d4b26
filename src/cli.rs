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
        /// Probe this URL instead, e.g. http://127.0.0.1:8080/healthz.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        timeout: u64,
    },
}
