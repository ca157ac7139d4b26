//! Real gunicorn (sync workers) from the interop virtualenv, serving a
//! small WSGI app that echoes `METHOD PATH BODY_LENGTH`, on a unix socket.
//! Killed for real (SIGKILL to its whole process group, workers included)
//! and restarted on the same socket by the tests that need an app server
//! to die under load.
#![allow(clippy::unwrap_used, dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::venv::venv_python;

/// The venv of tests/interop.rs: same place, same requirements, same
/// stamp, bounded the same way. `None` (the test is skipped, with a note)
/// only when there is no python3 at all.
pub fn interop_python() -> Option<PathBuf> {
    static PYTHON: OnceLock<Option<PathBuf>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let has_python = Command::new("python3")
                .arg("--version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !has_python {
                println!("SKIPPED: no python3 on PATH (the gunicorn tests need python3-venv)");
                return None;
            }
            Some(venv_python())
        })
        .clone()
}

const WSGI_APP: &str = r#"
def application(environ, start_response):
    n = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(n) if n else b""
    out = ("%s %s %d" % (environ["REQUEST_METHOD"], environ["PATH_INFO"], len(body))).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
    return [out]
"#;

/// `gunicorn -w 2 --worker-class sync` on a unix socket; stopped with
/// SIGTERM (then SIGKILL) on drop.
pub struct Gunicorn {
    child: Option<Child>,
    python: PathBuf,
    pub sock: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Gunicorn {
    pub fn start(python: &Path) -> Gunicorn {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.py"), WSGI_APP).unwrap();
        let mut g = Gunicorn {
            child: None,
            python: python.to_path_buf(),
            sock: dir.path().join("gunicorn.sock"),
            log: dir.path().join("gunicorn.log"),
            dir,
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let out = std::fs::File::create(&self.log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(&self.python)
            .args(["-m", "gunicorn", "-w", "2", "--worker-class", "sync"])
            .args(["--timeout", "60", "--graceful-timeout", "2"])
            .args(["--log-level", "warning", "--chdir"])
            .arg(self.dir.path())
            .arg("--bind")
            .arg(format!("unix:{}", self.sock.display()))
            .arg("app:application")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            // Its own process group: a kill reaches the workers too.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        self.child = Some(child);
        for _ in 0..300 {
            if std::os::unix::net::UnixStream::connect(&self.sock).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("gunicorn exited ({status}):\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("gunicorn did not listen within 30 s:\n{}", self.log_text());
    }

    /// SIGKILL to the master and its workers: connections are cut, the
    /// socket stops answering.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.sock);
    }

    /// Starts again on the same socket.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("unix:{}", self.sock.display())
    }
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..50 {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .status();
        let _ = child.wait();
    }
}

/// Gunicorn from the interop venv, or `None` (skip) without python3.
pub async fn gunicorn() -> Option<Gunicorn> {
    let python = tokio::task::spawn_blocking(interop_python).await.unwrap()?;
    Some(
        tokio::task::spawn_blocking(move || Gunicorn::start(&python))
            .await
            .unwrap(),
    )
}
