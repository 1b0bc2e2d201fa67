//! The `doorman` binary: `check` on the example and on a broken config, `--version`, and
//! `demo`, whose printed curl commands are run exactly as printed.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_doorman");
const EXAMPLE: &str = include_str!("../config/proxy.toml");

/// A temp dir laid out like the repository: config/proxy.toml (the example, verbatim) and
/// config/certs/dev.{crt,key} generated for this test.
fn example_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("config/certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(dir.path().join("config/proxy.toml"), EXAMPLE).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(certs.join("dev.crt"), ck.cert.pem()).unwrap();
    std::fs::write(certs.join("dev.key"), ck.signing_key.serialize_pem()).unwrap();
    dir
}

#[test]
fn example_config_parses_into_the_documented_values() {
    let dir = example_tree();
    let text = EXAMPLE.replace(
        "\"config/certs/",
        &format!("\"{}/config/certs/", dir.path().display()),
    );
    let c = doorman::config::parse(&text, Path::new("config/proxy.toml")).unwrap();
    assert_eq!(c.server.listen, "0.0.0.0:8443".parse().unwrap());
    assert_eq!(c.server.plain_listen, None);
    assert_eq!(c.server.admin_listen, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(c.server.max_connections, 10_000);
    assert_eq!(c.server.max_header_bytes, 16_384);
    assert_eq!(c.server.max_body_bytes, 10_485_760);
    assert_eq!(c.server.header_timeout, Duration::from_secs(10));
    assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.tls.len(), 1);
    assert_eq!(c.tls[0].server_names, ["localhost"]);
    assert_eq!(c.upstreams.len(), 1);
    let api = &c.upstreams[0];
    assert_eq!(api.name, "api");
    assert_eq!(api.connect_timeout, Duration::from_secs(2));
    assert_eq!(api.response_timeout, Duration::from_secs(30));
    let servers: Vec<(String, u32)> = api
        .servers
        .iter()
        .map(|s| (s.address.to_string(), s.weight))
        .collect();
    assert_eq!(
        servers,
        [
            ("127.0.0.1:9001".to_string(), 1),
            ("127.0.0.1:9002".to_string(), 1),
            ("127.0.0.1:9003".to_string(), 1)
        ]
    );
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].path_prefix, "/");
    assert_eq!(c.routes[0].upstream, "api");
    assert_eq!(c.routes[0].host, None);
}

#[test]
fn check_accepts_the_example_config() {
    let dir = example_tree();
    for args in [
        &["check", "config/proxy.toml"][..],
        &["check", "--config", "config/proxy.toml"],
        &["check"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout.trim(),
            "config/proxy.toml: configuration is valid (1 certificate(s), 1 upstream group(s), 1 route(s))"
        );
    }
}

#[test]
fn check_lists_every_error_in_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        r#"
[server]
listen = "0.0.0.0:99999"
header_timeout = "soon"
max_connections = 0

[[tls.certificates]]
cert = "missing.crt"
key = "missing.key"

[upstreams.api]
balance = "least_conn"
servers = [{ address = "not an address" }, { address = "127.0.0.1:9001", weight = -1 }]

[upstreams.web]
servers = []
timeout = "1s"

[[routes]]
path_prefix = "api/"
upstream = "nope"
"#,
    )
    .unwrap();
    let out = Command::new(BIN).arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let p = path.display().to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    // An unknown key no longer hides the rest of its group: upstreams.web.servers is checked.
    let expect_prefixes = [
        format!("{p}:3: server.listen: invalid socket address \"0.0.0.0:99999\""),
        format!("{p}:5: server.max_connections: 0 is out of range"),
        format!("{p}:4: server.header_timeout: invalid duration \"soon\""),
        format!("{p}:8: tls.certificates[0].cert: missing.crt: cannot read"),
        format!("{p}:12: upstreams.api.balance: unknown balance \"least_conn\""),
        format!("{p}:13: upstreams.api.servers[0].address: invalid address \"not an address\""),
        format!("{p}:13: upstreams.api.servers[1].weight: -1 is out of range 0..=1000"),
        format!("{p}:17: upstreams.web: unknown field `timeout`"),
        format!("{p}:16: upstreams.web.servers: at least one server is required"),
        format!("{p}:20: routes[0].path_prefix: \"api/\" must start with '/'"),
        format!("{p}:21: routes[0].upstream: no upstream group named \"nope\""),
        format!("{p}: configuration check failed with 11 error(s)"),
    ];
    assert_eq!(lines.len(), expect_prefixes.len(), "{stderr}");
    for (line, want) in lines.iter().zip(&expect_prefixes) {
        assert!(
            line.starts_with(want.as_str()),
            "\n got: {line}\nwant: {want}…"
        );
    }
}

#[test]
fn check_lists_every_key_type_and_value_error_with_its_line() {
    let dir = example_tree();
    let text = r#"[server]
listen = "127.0.0.1:8443"
listne = "127.0.0.1:8444"
workers = "four"
idle_timeout = "forever"
max_connections = true

[[tls.certificates]]
cert = "config/certs/dev.crt"
key = "config/certs/dev.key"

[upstream.api]
servers = [{ address = "127.0.0.1:9001" }]

[upstreams.api]
servers = [{ address = "127.0.0.1:9001", wieght = 2 }]
retries = "2"

[[routes]]
path_prefix = "/"
upstream = "api"

[[routes]]
path_prefix = "/admin"
upstream = "api"
auth = "sometimes"
colour = "blue"

[log]
level = "verbose"
access_format = "xml"
"#;
    std::fs::write(dir.path().join("broken.toml"), text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "broken.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let route_keys = "`path_prefix`, `upstream`, `host`, `auth`, `idempotency`, `allow_methods`";
    let want = [
        "broken.toml:12: upstream: unknown section, did you mean `upstreams`?".to_string(),
        "broken.toml:3: server: unknown field `listne`, did you mean `listen`?".to_string(),
        "broken.toml:4: server.workers: invalid type: string \"four\", expected i64".to_string(),
        "broken.toml:6: server.max_connections: invalid type: boolean `true`, expected i64"
            .to_string(),
        "broken.toml:5: server.idle_timeout: invalid duration \"forever\" (like \"500ms\", \"30s\", \"5m\"): expected number at 0".to_string(),
        "broken.toml:16: upstreams.api.servers[0]: unknown field `wieght`, did you mean `weight`?"
            .to_string(),
        "broken.toml:17: upstreams.api.retries: invalid type: string \"2\", expected i64"
            .to_string(),
        "broken.toml:31: log.access_format: unknown format \"xml\", expected \"text\" or \"json\""
            .to_string(),
        "broken.toml:30: log.level: unknown level \"verbose\", expected one of error, warn, info, debug, trace".to_string(),
        format!("broken.toml:27: routes[1]: unknown field `colour`, expected one of {route_keys}"),
        "broken.toml:26: routes[1].auth: unknown auth mode \"sometimes\", expected required, optional or off".to_string(),
        "broken.toml: configuration check failed with 11 error(s)".to_string(),
    ];
    let got: Vec<&str> = stderr.lines().collect();
    assert_eq!(got, want, "\n{stderr}");
}

#[test]
fn check_reports_an_unreadable_file() {
    let out = Command::new(BIN)
        .args(["check", "/nonexistent/proxy.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("/nonexistent/proxy.toml: cannot read file:"),
        "{stderr}"
    );
}

#[test]
fn version_flag_prints_name_and_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("doorman {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn run_refuses_to_start_on_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, "[server]\nlisten = \"nope\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.listen: invalid socket address"));
}

/// Kills the child on drop so a failing test never leaves a demo running.
struct Reaper(std::process::Child);
impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_prints_curl_commands_that_work_as_printed() {
    let ca_dir = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--ca-dir",
        ])
        .arg(ca_dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Reaper(child);
    let stdout = child.0.stdout.take().unwrap();

    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut commands = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("demo printed its commands in time");
        if line.starts_with("Press Ctrl-C") {
            break;
        }
        if let Some(cmd) = line.strip_prefix("  ") {
            commands.push(cmd.to_string());
        }
    }
    assert_eq!(commands.len(), 10, "{commands:?}");
    let run = |cmd: &str| {
        let out = Command::new("bash").args(["-c", cmd]).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let h1 = run(&commands[0]);
    assert!(h1.starts_with("HTTP/1.1 200"), "{h1}");
    assert!(h1.contains("x-upstream-id: replica-1"), "{h1}");
    assert!(h1.contains("\"path\": \"/hello\""), "{h1}");
    assert!(h1.contains("\"x-forwarded-proto\": \"https\""), "{h1}");

    let h2 = run(&commands[1]);
    assert!(h2.starts_with("HTTP/2 200"), "{h2}");
    assert!(h2.contains("x-upstream-id: replica-2"), "{h2}");

    // The loop shows the replicas taking turns, over HTTP/2 (curl's default with ALPN).
    let turns = run(&commands[2]);
    assert_eq!(
        turns.lines().collect::<Vec<_>>(),
        [
            "2 replica-3",
            "2 replica-1",
            "2 replica-2",
            "2 replica-3",
            "2 replica-1",
            "2 replica-2"
        ]
    );
    assert_eq!(run(&commands[3]), r#"{"ready":true}"#);

    // The JWT walk-through, in one shell so `export TOKEN=...` carries over.
    assert!(
        commands[4].starts_with("export TOKEN=ey"),
        "{}",
        commands[4]
    );
    let script = format!(
        "{}\n{}\necho '--'\n{}\necho '--'\n{}\necho '--'\n{}",
        commands[4], commands[5], commands[6], commands[7], commands[8]
    );
    let out = run(&script);
    let parts: Vec<&str> = out.split("--\n").collect();
    assert_eq!(parts.len(), 4, "{out}");
    assert!(
        parts[0].contains("\"x-user-id\": \"demo-user\""),
        "{}",
        parts[0]
    );
    assert!(
        !parts[0].contains("authorization"),
        "the demo strips the token: {}",
        parts[0]
    );
    assert_eq!(parts[1], "401\n");
    assert!(parts[2].starts_with(r#"{"revoked":{"#), "{}", parts[2]);
    assert_eq!(parts[3], "401\n");

    // The idempotent POST, twice: the second is the first replayed.
    let first = run(&commands[9]);
    let second = run(&commands[9]);
    assert!(first.starts_with("HTTP/2 200"), "{first}");
    assert!(!first.contains("idempotent-replayed"), "{first}");
    assert!(second.contains("idempotent-replayed: true"), "{second}");
    let id = |r: &str| {
        r.lines()
            .find(|l| l.starts_with("x-upstream-id"))
            .map(str::to_string)
    };
    assert_eq!(id(&first), id(&second));
    let body = |r: &str| r.split("\r\n\r\n").nth(1).map(str::to_string);
    assert_eq!(body(&first), body(&second));

    // SIGTERM drains and exits 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "demo exit status after SIGTERM: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "demo did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
