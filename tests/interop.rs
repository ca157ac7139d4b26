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

use std::process::Command;
use std::time::Duration;

mod common;
use common::venv::{repo, run_bounded, venv_python};

const BIN: &str = env!("CARGO_BIN_EXE_gateway");
const PYTEST_TIMEOUT: Duration = Duration::from_secs(5 * 60);

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
