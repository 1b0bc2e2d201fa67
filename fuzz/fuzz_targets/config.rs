//! `config::parse` on arbitrary text: never panics (every problem is a `ConfigError`).
//! Texts naming device or kernel files are skipped: the parser reads key and certificate
//! files named in the config, and `/dev/zero` would never end. Server names are resolved at
//! load (`host:port`): the resolver is told to give up after one second.
#![no_main]

use std::path::Path;
use std::sync::Once;

use libfuzzer_sys::fuzz_target;

static RESOLVER: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    // Server addresses are resolved at load: a name the fuzzer makes up must fail fast.
    RESOLVER.call_once(|| {
        // SAFETY: set once, before this process resolves any name.
        unsafe { std::env::set_var("RES_OPTIONS", "timeout:1 attempts:1") }
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys", "\\u", "\\U"]
        .iter()
        .any(|s| text.contains(s))
    {
        return;
    }
    if let Err(e) = doorman::config::parse(text, Path::new("fuzz.toml")) {
        // Formatting the errors is part of what a bad config goes through.
        let _ = e.to_string();
    }
});
