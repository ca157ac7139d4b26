//! The config loader: `config::load_str` on arbitrary text returns Ok or
//! Err, never panics. Relative paths resolve against the repository root
//! (so `gateway.toml.example`, a seed, is valid as it is).
#![no_main]

use libfuzzer_sys::fuzz_target;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../gateway.toml");

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = gateway::config::load_str(std::path::Path::new(PATH), text);
});
