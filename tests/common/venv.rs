//! The Python virtualenv the interop tests use (tests/interop.rs, and the
//! gunicorn tests in tests/request_path.rs): created once at
//! `target/interop-venv` from the pinned requirements, recreated when they
//! change (a stamp holds them), every step bounded by `SETUP_TIMEOUT`.
#![allow(clippy::unwrap_used, dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10 * 60);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` with its output in `log`, killed after `limit`.
/// Returns (success, output).
pub fn run_bounded(cmd: &mut Command, log: &Path, limit: Duration) -> (bool, String) {
    let out = fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let mut child = match cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn() {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot start {cmd:?}: {e}")),
    };
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = fs::read_to_string(log).unwrap_or_default();
    match status {
        Some(s) => (s.success(), text),
        None => (
            false,
            format!("{text}\n*** killed: still running after {limit:?}: {cmd:?}"),
        ),
    }
}

/// The virtualenv's python, creating the venv when it is missing or was
/// made from other requirements (the stamp holds the requirement files).
pub fn venv_python() -> PathBuf {
    let root = repo();
    let venv = root.join("target").join("interop-venv");
    let python = venv.join("bin").join("python");
    let stamp_path = venv.join("interop-requirements.stamp");
    let reqs = root.join("tests/interop/requirements.txt");
    let stamp = [reqs.clone(), root.join("examples/django/requirements.txt")]
        .iter()
        .map(|p| fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    if python.exists() && fs::read_to_string(&stamp_path).ok().as_deref() == Some(&stamp) {
        return python;
    }
    fs::create_dir_all(root.join("target")).unwrap();
    let log = root.join("target").join("interop-venv-setup.log");
    say(&format!(
        "interop tests: creating the Python virtualenv {} (once; python3 with its venv module)",
        venv.display()
    ));

    let (ok, out) = run_bounded(
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
        &log,
        SETUP_TIMEOUT,
    );
    assert!(
        ok,
        "`python3 -m venv {}` failed. The interop tests need python3 with its venv module \
         and ensurepip: on Debian/Ubuntu install the package python3-venv \
         (apt-get install python3-venv).\n{out}",
        venv.display()
    );
    say(
        "interop tests: installing Django, DRF, simplejwt, gunicorn, pytest and prometheus-client \
         from PyPI into it (about a minute, once)",
    );
    let (ok, out) = run_bounded(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
                "-r",
            ])
            .arg(&reqs),
        &log,
        SETUP_TIMEOUT,
    );
    assert!(
        ok,
        "pip install -r {} into {} failed (PyPI must be reachable):\n{out}",
        reqs.display(),
        venv.display()
    );
    fs::write(&stamp_path, &stamp).unwrap();
    say("interop tests: virtualenv ready");
    python
}

/// Straight to stderr: libtest captures `eprintln!`, not writes to the
/// stream itself, so `cargo test` shows what the long setup is doing.
fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}
