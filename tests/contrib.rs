//! What ships in contrib/ and the service-manager side of the binary: the systemd unit
//! passes `systemd-analyze verify`, the logrotate snippet parses, the alert rules pass
//! `promtool check rules` / `promtool test rules` and name only exported metrics, every
//! metric the Grafana dashboard queries is exported by a running doorman, sd_notify's
//! READY/RELOADING/STOPPING reach NOTIFY_SOCKET, and completions and the man page render.
//!
//! The external tools (systemd-analyze, logrotate, promtool) are installed by
//! scripts/test.sh; a missing one fails its test rather than skipping it.

mod support;

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use http::Method;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_doorman");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn contrib(path: &str) -> PathBuf {
    Path::new(ROOT).join("contrib").join(path)
}

/// An external tool on PATH (or in the sbin directories, where logrotate lives), else a
/// failure naming the package that brings it.
fn tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found{}: install the Debian package `{package}` (scripts/test.sh does)",
                if std::env::var_os("CI").is_some() {
                    " on CI"
                } else {
                    ""
                }
            )
        })
}

/// Run a command with a bounded wait; its output.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------- systemd unit

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let analyze = tool("systemd-analyze", "systemd");
    let unit = std::fs::read_to_string(contrib("systemd/doorman.service")).unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecStart=/usr/local/bin/doorman run --config /etc/doorman/proxy.toml",
        "ExecReload=/usr/local/bin/doorman reload --config /etc/doorman/proxy.toml",
        "KillSignal=SIGTERM",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "LogsDirectory=doorman",
        "RuntimeDirectory=doorman",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "the unit lacks {line:?}"
        );
    }
    // The stop timeout must outlast the default drain (shutdown_grace 30s + 2s to close).
    let stop = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec");
    let stop = humantime::parse_duration(stop.trim()).unwrap();
    assert!(stop > Duration::from_secs(32), "TimeoutStopSec={stop:?}");

    // verify checks that the commands exist and are executable: point them at this build.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doorman.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/doorman", BIN)).unwrap();
    // --man=no: the man page is generated (`doorman manpage`), not installed here.
    let out = run_bounded(
        Command::new(analyze)
            .args(["verify", "--man=no"])
            .arg(&path)
            .current_dir(dir.path()),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("doorman.service"),
        "systemd-analyze verify warned about the unit: {stderr}"
    );
}

// ---------------------------------------------------------------- logrotate

#[test]
fn logrotate_snippet_parses() {
    let logrotate = tool("logrotate", "logrotate");
    let snippet = std::fs::read_to_string(contrib("logrotate/doorman")).unwrap();
    for word in [
        "/var/log/doorman/*.log",
        "daily",
        "rotate 14",
        "compress",
        "delaycompress",
        "missingok",
        "notifempty",
        "sharedscripts",
        "postrotate",
        "SIGUSR1",
    ] {
        assert!(snippet.contains(word), "the snippet lacks {word:?}");
    }
    // -d: parse and plan, change nothing; its own state file so the system's is not read.
    let dir = tempfile::tempdir().unwrap();
    let out = run_bounded(
        Command::new(logrotate)
            .arg("-d")
            .arg("-s")
            .arg(dir.path().join("state"))
            .arg(contrib("logrotate/doorman")),
        Duration::from_secs(60),
    );
    let all = text(&out);
    assert!(out.status.success(), "logrotate -d: {all}");
    assert!(!all.contains("error:"), "logrotate -d: {all}");
    assert!(
        all.contains("rotating pattern: /var/log/doorman/*.log"),
        "{all}"
    );
}

// ---------------------------------------------------------------- Prometheus rules

#[test]
fn prometheus_rules_pass_promtool() {
    let promtool = tool("promtool", "prometheus");
    let out = run_bounded(
        Command::new(&promtool)
            .args(["check", "rules"])
            .arg(contrib("prometheus/doorman.rules.yml")),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "promtool check rules: {}", text(&out));
    let out = run_bounded(
        Command::new(&promtool)
            .args(["test", "rules"])
            .arg(contrib("prometheus/doorman.rules.test.yml")),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "promtool test rules: {}", text(&out));
    let rules = std::fs::read_to_string(contrib("prometheus/doorman.rules.yml")).unwrap();
    for alert in [
        "DoormanReplicaDown",
        "DoormanGroupDown",
        "DoormanStoreUnreachable",
        "DoormanRevocationViewUntrusted",
        "DoormanReloadFailed",
        "DoormanHigh5xxRatio",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}\n")),
            "no alert {alert}"
        );
    }
}

// ---------------------------------------------------------------- metric names

/// The `doorman_*` metric names in a PromQL expression (label values in quotes skipped).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_string = false;
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if in_string {
            in_string = c != '"';
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if word.starts_with("doorman_") {
            names.insert(word.clone());
        }
        word.clear();
        in_string = c == '"';
    }
    names
}

/// Every expression in the dashboard: panel targets (rows included), variables,
/// annotations.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query" | "definition", serde_json::Value::String(s))
                        if s.contains("doorman_") =>
                    {
                        out.push(s.clone())
                    }
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// The sample names in a /metrics scrape.
fn sample_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

async fn scrape(p: &TestProxy) -> String {
    let mut admin = Client::plain(p.addrs.admin).await;
    let (resp, body) = admin.get("/metrics").await;
    assert_eq!(resp.status(), 200);
    String::from_utf8(body.to_vec()).unwrap()
}

async fn post_keyed(p: &TestProxy, key: &str) -> u16 {
    let mut c = p.h1().await;
    let req = c
        .request(Method::POST, "/orders")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(full("{}"))
        .unwrap();
    c.send_collect(req).await.0.status().as_u16()
}

/// Every series a doorman exports once it has served a little: two instances, one with
/// the embedded store (requests, idempotency, a reload), one whose Redis is unreachable
/// with on_error = "open" (store errors, requests let through). Families with no series
/// yet are not exported at all, hence the workload.
async fn exported_names() -> BTreeSet<String> {
    let replica = Replica::start("a").await;
    let rest = group_toml("api", &[replica.addr], "")
        + &route_toml("/orders", "api")
        + "idempotency = \"required\"\n"
        + &route_toml("/", "api")
        + "[idempotency]\n";
    let p = TestProxy::start_reloadable("", &rest).await;
    let mut c = p.h1().await;
    assert_eq!(c.get("/").await.0.status(), 200);
    assert_eq!(c.get("/status/503").await.0.status(), 503);
    assert_eq!(post_keyed(&p, "k-1").await, 200);
    assert_eq!(p.reload_rest(&rest).await.result, "ok");
    let mut names = sample_names(&scrape(&p).await);
    p.stop().await;

    let dead = closed_port().await;
    let store = format!("[store]\nredis_url = \"redis://{dead}\"\non_error = \"open\"\n");
    let p = TestProxy::start("", &format!("{rest}{store}")).await;
    assert_eq!(post_keyed(&p, "k-2").await, 200);
    names.extend(sample_names(&scrape(&p).await));
    p.stop().await;
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_rules_query_only_exported_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_slice(&std::fs::read(contrib("grafana/doorman.json")).unwrap())
            .expect("contrib/grafana/doorman.json is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel {} has no query", p["title"]);
    }
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    // The rules' expressions: the file less its comments.
    let rules: String = std::fs::read_to_string(contrib("prometheus/doorman.rules.yml"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");

    let exported = exported_names().await;
    let mut used = BTreeSet::new();
    for e in &exprs {
        let names = metric_names(e);
        assert!(
            !names.is_empty(),
            "an expression names no doorman metric: {e}"
        );
        used.extend(names);
    }
    let in_rules = metric_names(&rules);
    assert!(in_rules.len() >= 6, "{in_rules:?}");
    let missing: Vec<_> = used
        .iter()
        .chain(&in_rules)
        .filter(|n| !exported.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\nexported: {exported:?}"
    );
    // The panels the dashboard promises.
    for family in [
        "doorman_requests_total",
        "doorman_request_duration_seconds_bucket",
        "doorman_replica_up",
        "doorman_replica_in_flight",
        "doorman_retries_total",
        "doorman_retry_budget_exhausted_total",
        "doorman_idempotency_total",
        "doorman_revocation_checks_total",
        "doorman_store_errors_total",
        "doorman_reloads_total",
        "doorman_connections",
        "doorman_log_dropped_lines_total",
    ] {
        assert!(used.contains(family), "the dashboard has no {family}");
    }
}

// ---------------------------------------------------------------- sd_notify

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `doorman run` under a fake service manager: killed if the test fails first.
struct Managed {
    child: Child,
    dir: tempfile::TempDir,
    socket: UnixDatagram,
}

impl Managed {
    fn start() -> Managed {
        let dir = tempfile::tempdir().unwrap();
        let socket_path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.path().join("c.crt"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("c.key"), ck.signing_key.serialize_pem()).unwrap();
        let config = dir.path().join("proxy.toml");
        let d = dir.path().display();
        let text = format!(
            "[server]\nlisten = \"{}\"\nadmin_listen = \"{}\"\nshutdown_grace = \"2s\"\n\
             [[tls.certificates]]\ncert = \"{d}/c.crt\"\nkey = \"{d}/c.key\"\n{}{}",
            free_port(),
            free_port(),
            group_toml("api", &[free_port()], ""),
            route_toml("/", "api"),
        );
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(dir.path().join("doorman.log")).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Managed { child, dir, socket }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("doorman.log")).unwrap_or_default()
    }

    /// The next datagram, within 20 s.
    fn next(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("recv: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "no notification within 20s; doorman's log:\n{}",
                self.log()
            );
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(msg: &str) -> Vec<&str> {
    msg.lines().collect()
}

#[test]
fn sd_notify_reports_ready_reloading_and_stopping() {
    use nix::sys::signal::Signal;
    let mut d = Managed::start();
    let msg = d.next();
    assert_eq!(lines(&msg), ["READY=1"], "{}", d.log());

    d.signal(Signal::SIGHUP);
    let msg = d.next();
    let l = lines(&msg);
    assert_eq!(l[0], "RELOADING=1", "{msg}");
    let usec = l
        .iter()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {msg}"));
    assert!(usec.parse::<u64>().unwrap() > 0, "{msg}");
    let msg = d.next();
    assert_eq!(lines(&msg)[0], "READY=1", "{msg}");
    assert!(msg.contains("STATUS=configuration reloaded"), "{msg}");

    // A refused reload is over too: READY=1 again, saying so.
    std::fs::write(d.dir.path().join("proxy.toml"), "[server]\nlisten = 1\n").unwrap();
    d.signal(Signal::SIGHUP);
    assert_eq!(lines(&d.next())[0], "RELOADING=1");
    let msg = d.next();
    assert_eq!(lines(&msg)[0], "READY=1", "{msg}");
    assert!(msg.contains("reload failed"), "{msg}");

    d.signal(Signal::SIGTERM);
    let msg = d.next();
    assert_eq!(lines(&msg)[0], "STOPPING=1", "{msg}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "doorman did not exit:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}\n{}", d.log());
}

// ---------------------------------------------------------------- completions, man page

const SUBCOMMANDS: [&str; 8] = [
    "run",
    "check",
    "revoke",
    "reload",
    "demo",
    "compare",
    "completions",
    "manpage",
];

fn doorman(args: &[&str]) -> String {
    let out = run_bounded(
        Command::new(BIN).args(args).env("RUST_LOG", "off"),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "doorman {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_name_every_subcommand() {
    let bash = doorman(&["completions", "bash"]);
    assert!(bash.contains("complete -F _doorman"), "{bash}");
    for sub in SUBCOMMANDS {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    for shell in ["zsh", "fish"] {
        let script = doorman(&["completions", shell]);
        assert!(script.contains("reload"), "{shell}: {script}");
    }
}

#[test]
fn manpage_is_roff_and_names_every_subcommand() {
    let page = doorman(&["manpage"]);
    assert!(page.starts_with(".TH doorman 1"), "{}", &page[..80]);
    for sub in SUBCOMMANDS {
        assert!(
            page.contains(&format!("doorman\\-{sub}(1)")),
            "the man page does not list {sub}"
        );
        assert!(
            page.contains(&format!(".SH \"DOORMAN\\-{}\"", sub.to_uppercase())),
            "the man page has no section for {sub}"
        );
    }
    // The subcommands' own options are there, not only their names.
    assert!(page.contains("\\-\\-pid\\-file"), "reload --pid-file");
}
