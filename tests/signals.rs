//! The real `doorman run` process and its signals: SIGHUP through `doorman reload` (which
//! reports the instance's verdict), SIGTERM letting a slow request finish, exit 0.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_doorman");

/// A free loopback port (bound, then released).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `doorman run` process, killed if the test fails before it exits.
struct Instance {
    child: Option<Child>,
    dir: tempfile::TempDir,
    config: PathBuf,
    plain: SocketAddr,
    admin: SocketAddr,
    head: String,
}

impl Instance {
    async fn start(rest: &str) -> Instance {
        Self::start_logging(rest, &["run"], "info").await
    }

    /// With `workers = 1`: the single-threaded runtime.
    async fn start_one_worker(rest: &str) -> Instance {
        Self::start_with(rest, &["run"], "info", "workers = 1\n").await
    }

    /// `args` come before `run` (e.g. `--log-format json`); `rust_log` filters the log.
    async fn start_logging(rest: &str, args: &[&str], rust_log: &str) -> Instance {
        Self::start_with(rest, args, rust_log, "").await
    }

    /// `server` is added to the `[server]` table.
    async fn start_with(rest: &str, args: &[&str], rust_log: &str, server: &str) -> Instance {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.path().join("c.crt"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("c.key"), ck.signing_key.serialize_pem()).unwrap();
        let (tls, plain, admin) = (free_port(), free_port(), free_port());
        let head = format!(
            "[server]\nlisten = \"{tls}\"\nplain_listen = \"{plain}\"\nadmin_listen = \"{admin}\"\n\
             shutdown_grace = \"5s\"\npid_file = \"{0}/doorman.pid\"\n{server}\
             [[tls.certificates]]\ncert = \"{0}/c.crt\"\nkey = \"{0}/c.key\"\n",
            dir.path().display()
        );
        let config = dir.path().join("proxy.toml");
        std::fs::write(&config, format!("{head}{rest}")).unwrap();
        let log = std::fs::File::create(dir.path().join("doorman.log")).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .args(["--config"])
            .arg(&config)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let instance = Instance {
            child: Some(child),
            dir,
            config,
            plain,
            admin,
            head,
        };
        within("doorman is ready", async {
            loop {
                // Client::plain insists on a connection: probe first.
                if tokio::net::TcpStream::connect(instance.admin).await.is_ok() {
                    let mut c = Client::plain(instance.admin).await;
                    if c.get("/ready").await.0.status() == 200 {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(instance.dir.path().join("doorman.pid").exists());
        instance
    }

    fn write(&self, rest: &str) {
        std::fs::write(&self.config, format!("{}{rest}", self.head)).unwrap();
    }

    /// `doorman reload --config <this config>` (the pid file comes from the config).
    fn reload(&self) -> Output {
        Command::new(BIN)
            .args(["reload", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "off")
            .output()
            .unwrap()
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("doorman.log")).unwrap_or_default()
    }

    /// Wait for the process to exit (at most `limit`).
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "doorman did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn served_by(addr: SocketAddr) -> String {
    let (resp, _) = Client::plain(addr).await.get("/who").await;
    assert_eq!(resp.status(), 200);
    resp.headers()["x-upstream-id"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn doorman_reload_signals_the_instance_and_reports_its_verdict() {
    let (a, b) = (Replica::start("a").await, Replica::start("b").await);
    let rest = |r: &Replica| group_toml("api", &[r.addr], "") + &route_toml("/", "api");
    let mut d = Instance::start(&rest(&a)).await;
    assert_eq!(served_by(d.plain).await, "a");

    // A valid change: SIGHUP, the instance reports success, traffic moves.
    d.write(&rest(&b));
    let out = d.reload();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("reloaded: config_hash "), "{stdout}");
    assert_eq!(served_by(d.plain).await, "b");

    // The admin listener moves: the verdict is read from the new address.
    let moved = free_port();
    d.head = d.head.replace(
        &format!("admin_listen = \"{}\"", d.admin),
        &format!("admin_listen = \"{moved}\""),
    );
    d.admin = moved;
    d.write(&rest(&b));
    let out = d.reload();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut admin = Client::plain(moved).await;
    assert_eq!(admin.get("/health").await.0.status(), 200);

    // An invalid file: refused before any signal, every error listed.
    d.write("[upstreams.api]\nservers = [{ address = \"nowhere\" }]\nretries = -1\n");
    let out = d.reload();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("upstreams.api.servers[0].address"),
        "{stderr}"
    );
    assert!(stderr.contains("upstreams.api.retries"), "{stderr}");
    assert!(stderr.contains("not reloading"), "{stderr}");

    // Valid as a file, refused by the instance (the new plain port is taken): the
    // instance's own errors come back, and it keeps serving as before.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    std::fs::write(
        &d.config,
        format!("{}{}", d.head, rest(&a)).replace(
            &format!("plain_listen = \"{}\"", d.plain),
            &format!("plain_listen = \"{taken}\""),
        ),
    )
    .unwrap();
    let out = d.reload();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("reload failed"), "{stderr}");
    assert!(
        stderr.contains(&format!("server.plain_listen: cannot bind {taken}")),
        "{stderr}"
    );
    assert_eq!(served_by(d.plain).await, "b");

    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());
    assert!(
        !d.dir.path().join("doorman.pid").exists(),
        "the pid file is removed"
    );
    drop(squatter);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_slow_request_finish_refuses_new_ones_and_exits_zero() {
    let r = Replica::start("r").await;
    // One worker: the current-thread runtime `workers = 1` selects shuts down cleanly too.
    let mut d =
        Instance::start_one_worker(&(group_toml("api", &[r.addr], "") + &route_toml("/", "api")))
            .await;
    let mut slow = Client::plain(d.plain).await;
    let req = slow
        .request(http::Method::GET, "/sleep/1500")
        .body(empty())
        .unwrap();
    let in_flight = tokio::spawn(async move { slow.send_collect(req).await });
    within("the slow request reaches the replica", async {
        while r.count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let signalled = Instant::now();
    d.signal(nix::sys::signal::Signal::SIGTERM);
    // New connections are refused once the signal is handled.
    within("the listener closes", async {
        while tokio::net::TcpStream::connect(d.plain).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let (resp, body) = within("the slow request completes", in_flight)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(&body[..], b"slept");
    let status = d.wait(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}:\n{}", d.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "exited within the 5s grace: {:?}",
        signalled.elapsed()
    );
    assert!(d.log().contains("drained"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_has_one_json_line_per_request_written_when_the_body_ends() {
    let r = Replica::start("r").await;
    let mut d = Instance::start_logging(
        &(group_toml("api", &[r.addr], "")
            + &route_toml("/", "api")
            + "[log]\naccess_format = \"json\"\n"),
        &["run"],
        "warn",
    )
    .await;
    let mut c = Client::plain(d.plain).await;
    let req = c
        .request(http::Method::GET, "/bytes/100000")
        .header("x-request-id", "trace-me-1")
        .body(empty())
        .unwrap();
    let (resp, body) = c.send_collect(req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body.len(), 100_000);
    let req = c
        .request(http::Method::POST, "/upload")
        .header("x-request-id", "trace-me-2")
        .header("content-length", "5")
        .body(full("hello"))
        .unwrap();
    assert_eq!(c.send_collect(req).await.0.status(), 200);
    assert_eq!(c.get("/nothing-here").await.0.status(), 200);
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success());

    // The diagnostic log (text, on the same stderr) is not JSON: only access lines parse.
    let lines: Vec<serde_json::Value> = d
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect();
    assert_eq!(lines.len(), 3, "{}", d.log());
    let get = lines
        .iter()
        .find(|l| l["request_id"] == "trace-me-1")
        .expect("the GET's line");
    assert_eq!(get["method"], "GET");
    assert_eq!(get["path"], "/bytes/100000");
    assert_eq!(get["route"], "/");
    assert_eq!(get["status"], 200);
    assert_eq!(get["upstream"], r.addr.to_string());
    assert_eq!(get["attempts"], 1);
    assert_eq!(
        get["bytes_out"], 100_000,
        "counted as sent, at the end of the body"
    );
    assert_eq!(get["complete"], true);
    assert_eq!(get["subject"], serde_json::Value::Null);
    assert_eq!(get["idempotency"], serde_json::Value::Null);
    assert_eq!(get["bytes_in"], serde_json::Value::Null);
    assert!(get["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(get["upstream_us"].as_u64().unwrap() > 0);
    assert!(get["duration_us"].as_u64().unwrap() >= get["upstream_us"].as_u64().unwrap());
    assert!(get["time"].as_str().unwrap().ends_with('Z'));
    let post = lines
        .iter()
        .find(|l| l["request_id"] == "trace-me-2")
        .expect("the POST's line");
    assert_eq!(post["bytes_in"], 5);
}

/// Every line of `text` is a whole access-log line in the text format (17 fields: no torn or
/// interleaved one, none cut short); how many.
fn whole_lines(text: &str, file: &std::path::Path) -> usize {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends mid-line",
        file.display()
    );
    for line in text.lines() {
        // Nothing in these requests needs quoting: a space always separates two fields.
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 17, "{}: a torn line: {line}", file.display());
        assert!(f[0].len() == 24 && f[0].ends_with('Z'), "{line}");
        assert_eq!(f[3], "GET", "{line}");
        assert_eq!(f[6], "200", "{line}");
        assert_eq!(f[14], "true", "{line}");
    }
    text.lines().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_log_file_is_reopened_on_sigusr1_under_load_with_no_line_lost_or_torn() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const REOPENS: usize = 20;
    let r = Replica::start("r").await;
    let logs = tempfile::tempdir().unwrap();
    let file = logs.path().join("access.log");
    let mut d = Instance::start(
        &(group_toml("api", &[r.addr], "")
            + &route_toml("/", "api")
            + &format!("[log]\naccess = \"{}\"\n", file.display())),
    )
    .await;
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (answered, stop, addr) = (answered.clone(), stop.clone(), d.plain);
        clients.push(tokio::spawn(async move {
            let mut c = Client::plain(addr).await;
            // Bounded: 20 rotations need a few thousand requests at most.
            for _ in 0..50_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (resp, body) = c.get("/hello").await;
                assert_eq!(resp.status(), 200);
                assert!(!body.is_empty());
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    within("20 rotations under load", async {
        // Lines for the first file before it is moved.
        while answered.load(Ordering::Relaxed) < 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for n in 1..=REOPENS {
            // As logrotate: move the file away, then tell doorman to reopen its path.
            std::fs::rename(&file, logs.path().join(format!("access.log.{n}"))).unwrap();
            d.signal(nix::sys::signal::Signal::SIGUSR1);
            while !file.exists() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Lines for the new file before the next rotation, so each file gets some.
            let seen = answered.load(Ordering::Relaxed);
            while answered.load(Ordering::Relaxed) < seen + 20 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success(), "{}", d.log());

    let mut written = 0;
    for n in 1..=REOPENS {
        let rotated = logs.path().join(format!("access.log.{n}"));
        let lines = whole_lines(&std::fs::read_to_string(&rotated).unwrap(), &rotated);
        assert!(lines > 0, "{} is empty", rotated.display());
        written += lines;
    }
    written += whole_lines(&std::fs::read_to_string(&file).unwrap(), &file);
    assert_eq!(written as u64, answered.load(Ordering::Relaxed));
    assert_eq!(
        d.log().matches("SIGUSR1: reopening the access log").count(),
        REOPENS
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_moves_the_access_log_to_another_file_format_or_off() {
    let r = Replica::start("r").await;
    let logs = tempfile::tempdir().unwrap();
    let (first, second) = (logs.path().join("a.log"), logs.path().join("b.log"));
    let rest =
        |log: &str| group_toml("api", &[r.addr], "") + &route_toml("/", "api") + "[log]\n" + log;
    let mut d = Instance::start(&rest(&format!("access = \"{}\"\n", first.display()))).await;
    let mut c = Client::plain(d.plain).await;
    assert_eq!(c.get("/one").await.0.status(), 200);

    d.write(&rest(&format!(
        "access = \"{}\"\naccess_format = \"json\"\n",
        second.display()
    )));
    assert!(d.reload().status.success());
    assert_eq!(c.get("/two").await.0.status(), 200);

    d.write(&rest("access = \"off\"\n"));
    assert!(d.reload().status.success());
    assert_eq!(c.get("/three").await.0.status(), 200);
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(d.wait(Duration::from_secs(10)).success(), "{}", d.log());

    let a = std::fs::read_to_string(&first).unwrap();
    assert_eq!(whole_lines(&a, &first), 1);
    assert!(a.contains(" GET /one / 200 "), "{a}");
    let b = std::fs::read_to_string(&second).unwrap();
    assert_eq!(b.lines().count(), 1, "{b}");
    let v: serde_json::Value = serde_json::from_str(b.trim_end()).unwrap();
    assert_eq!(v["path"], "/two");
    assert!(!d.log().contains("/three"), "off: no line anywhere");
}
