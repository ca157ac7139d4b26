//! The real stack: Django + DRF + simplejwt under gunicorn behind the built
//! gateway binary, checked by the Python tests in `tests/interop/`.
//!
//! This test only sets the stage: it creates (once, cached) a virtualenv at
//! `target/interop-venv` with the pinned requirements of
//! `examples/django/requirements.txt` plus pytest, then runs
//! `python -m pytest -q tests/interop` with `GATEWAY_BIN` pointing at the
//! binary cargo built, and fails with pytest's output unless it exits 0.
//! It needs python3 with the venv module (Debian: `python3-venv`) and PyPI.
//! Every step is bounded: venv creation and pip by `SETUP_TIMEOUT`, pytest
//! by `PYTEST_TIMEOUT`; a child still running then is killed.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");
const SETUP_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const PYTEST_TIMEOUT: Duration = Duration::from_secs(5 * 60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` with its output in `log`, killed after `limit`.
/// Returns (success, output).
fn run_bounded(cmd: &mut Command, log: &Path, limit: Duration) -> (bool, String) {
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
fn venv_python() -> PathBuf {
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
    python
}

#[test]
fn django_simplejwt_stack_behind_the_gateway() {
    let python = venv_python();
    let root = repo();
    let log = root.join("target").join("interop-pytest.log");
    let (ok, out) = run_bounded(
        Command::new(&python)
            .args([
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/interop",
            ])
            .current_dir(&root)
            .env("GATEWAY_BIN", BIN)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env_remove("GATEWAY_CONFIG")
            .env_remove("RUST_LOG"),
        &log,
        PYTEST_TIMEOUT,
    );
    // Shown by the test harness on failure (and with --nocapture).
    println!("{out}");
    assert!(ok, "pytest tests/interop failed; its output is above");
}
