//! `doorman reload`: check the file, signal the running instance, wait for its verdict.

use std::path::PathBuf;
use std::process::ExitCode;

use doorman::config;

use crate::fail;

/// `doorman reload`: check the file first (like `nginx -t`), signal, then wait for the
/// instance to report an attempt made after the signal on its admin listener.
pub(crate) fn reload(path: PathBuf, pid_file: Option<PathBuf>) -> ExitCode {
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => return fail(format!("{}: cannot read file: {e}", path.display())),
    };
    let config = match config::parse(&text, &path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{}: not reloading: the file is invalid", path.display());
            return ExitCode::FAILURE;
        }
    };
    let Some(pid_file) = pid_file.or(config.server.pid_file.clone()) else {
        return fail("no pid file: set [server] pid_file or pass --pid-file".into());
    };
    let pid = match std::fs::read_to_string(&pid_file)
        .map_err(|e| e.to_string())
        .and_then(|t| t.trim().parse::<i32>().map_err(|e| e.to_string()))
    {
        Ok(pid) if pid > 0 => pid,
        Ok(pid) => return fail(format!("{}: bad pid {pid}", pid_file.display())),
        Err(e) => return fail(format!("{}: {e}", pid_file.display())),
    };
    // A stale pid file may name another program now: SIGHUP would likely end it.
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) if comm.trim_end().starts_with("doorman") => {}
        Ok(comm) => {
            return fail(format!(
                "pid {pid} (from {}) is {:?}, not doorman: stale pid file?",
                pid_file.display(),
                comm.trim_end()
            ));
        }
        Err(_) => {
            return fail(format!(
                "no process {pid} (from {}): stale pid file?",
                pid_file.display()
            ));
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let admin = config.server.admin_listen;
    let expected = doorman::reload::config_hash(&text);
    let signalled_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if let Err(e) = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    ) {
        return fail(format!("cannot signal pid {pid}: {e}"));
    }
    // The admin address is the new file's: where the instance listens once the reload
    // applies (a refused reload that moved it cannot be reported here).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let Some(v) = rt
            .block_on(doorman::admin::request(
                admin,
                config.server.admin_token.as_ref(),
                http::Method::GET,
                "/reload",
                None,
            ))
            .ok()
            .and_then(|(_, text)| serde_json::from_str::<serde_json::Value>(&text).ok())
        else {
            continue;
        };
        if v["at_unix_ms"].as_u64().is_none_or(|t| t < signalled_ms) || v["generation"] == 0 {
            continue;
        }
        let hash = v["config_hash"].as_str().unwrap_or("?");
        if v["result"] != "ok" {
            eprintln!("reload failed; the running configuration is unchanged:");
            for e in v["errors"].as_array().into_iter().flatten() {
                eprintln!("  {}", e.as_str().unwrap_or("?"));
            }
            return ExitCode::FAILURE;
        }
        if hash != expected {
            return fail(format!(
                "the instance reloaded config_hash {hash}, but this file is {expected}: it changed meanwhile, or another reload ran"
            ));
        }
        println!("reloaded: config_hash {hash}");
        return ExitCode::SUCCESS;
    }
    fail(format!(
        "SIGHUP sent to {pid}, but its admin listener {admin} reported no reload within 15s; see its log"
    ))
}
