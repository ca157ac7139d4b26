//! The built `gateway` binary as a child process: for tests that read its
//! memory and descriptors from /proc, its log lines, or restart it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::time::sleep;

pub const BIN: &str = env!("CARGO_BIN_EXE_gateway");

/// The binary to run: `GATEWAY_BIN` (e.g. a release build for the soak),
/// else the one `cargo test` built.
pub fn bin() -> String {
    std::env::var("GATEWAY_BIN").unwrap_or_else(|_| BIN.to_string())
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub struct Bin {
    pub child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// Its stderr (the log), appended across restarts.
    pub log_path: PathBuf,
}

impl Drop for Bin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &std::path::Path, log_path: &std::path::Path, rust_log: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    Command::new(bin())
        .args(["serve", "--config", "gateway.toml"])
        .current_dir(dir)
        .env_remove("GATEWAY_CONFIG")
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn wait_for(addr: SocketAddr) {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "gateway did not start"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

impl Bin {
    /// Runs the binary on `toml` (`{dir}` replaced by `dir`'s path) and
    /// waits for `port` (its `listen`) to accept. `rust_log`: RUST_LOG.
    pub async fn launch_in(dir: tempfile::TempDir, toml: &str, port: u16, rust_log: &str) -> Bin {
        let text = toml.replace("{dir}", dir.path().to_str().unwrap());
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, text).unwrap();
        let log_path = dir.path().join("gateway.log");
        let child = spawn(dir.path(), &log_path, rust_log);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for(addr).await;
        Bin {
            pid: child.id(),
            child,
            addr,
            dir,
            config_path,
            log_path,
        }
    }

    /// Stops it (SIGKILL: no chance to flush anything) and starts it again
    /// on the same directory.
    pub async fn restart(&mut self, rust_log: &str) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self.dir.path(), &self.log_path, rust_log);
        self.pid = self.child.id();
        wait_for(self.addr).await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits up to `within` for `needle` in the log.
    pub async fn logged(&self, needle: &str, within: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if self.log().contains(needle) {
                return true;
            }
            sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// A field of /proc/PID/status in KiB ("VmRSS:", "VmHWM:").
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .unwrap()
            .count()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Runs `gateway ARGS --config <its config>`: (success, output).
    pub fn command(&self, args: &[&str]) -> (bool, String) {
        command(&self.config_path, args)
    }
}

/// Runs `gateway ARGS --config CONFIG`: (success, stdout and stderr).
pub fn command(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
