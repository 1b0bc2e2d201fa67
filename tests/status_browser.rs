//! The status page in a real browser (headless Chromium): loaded against a running proxy
//! with traffic, its script renders every replica with its health. A screenshot is saved
//! as target/status-page.png for the reviewer. Needs `chromium` (scripts/test.sh installs
//! it); fails, never skips, without it.

mod support;

use std::process::Command;

use support::*;

/// Run headless Chromium (bounded by `timeout`) on `url` with `args`; returns stdout.
fn chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .args(["60", "chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // Let the page's fetch and render run before the DOM or screenshot is taken.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium must be installed (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_every_replica_and_its_health_in_a_browser() {
    let (a, b) = (Replica::start("a").await, Replica::start("b").await);
    let dead = closed_port().await;
    let rest = format!(
        "[upstreams.api]\nretries = 0\nservers = [{{ address = \"{}\" }}, {{ address = \"{}\" }}, {{ address = \"{dead}\" }}]\n\
         [upstreams.api.health]\neject_after_failures = 1\neject_for = \"60s\"\n{}",
        a.addr,
        b.addr,
        route_toml("/", "api")
    );
    let p = TestProxy::start_reloadable("", &rest).await;
    let mut c = p.h1().await;
    for _ in 0..30 {
        c.get("/").await;
    }
    let url = format!("http://{}/status", p.addrs.admin);

    let dom = tokio::task::spawn_blocking({
        let url = url.clone();
        move || chromium(&url, &["--dump-dom"])
    })
    .await
    .unwrap();
    // What the script rendered (the script's own text holds the same markup).
    let start = dom.find("<div id=\"groups\">").expect("the groups section");
    let end = dom.find("<h2>State store</h2>").expect("the store section");
    let rendered = &dom[start..end];
    let rows: Vec<&str> = rendered.split("<tr class=\"replica\">").skip(1).collect();
    assert_eq!(rows.len(), 3, "one row per replica in:\n{dom}");
    for (addr, state) in [
        (a.addr.to_string(), "up"),
        (b.addr.to_string(), "up"),
        (dead.to_string(), "ejected"),
    ] {
        let row = rows
            .iter()
            .find(|r| r.contains(&format!("<td>{addr}</td>")))
            .unwrap_or_else(|| panic!("no row for {addr} in:\n{dom}"));
        assert!(
            row.contains(&format!("<span class=\"state {state}\">{state}</span>")),
            "{addr} should be {state}: {row}"
        );
    }
    assert!(dom.contains("Group api"), "{dom}");
    assert!(dom.contains("round robin"));
    assert!(dom.contains("embedded: connected"));

    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let _ = std::fs::remove_file(&shot);
    tokio::task::spawn_blocking({
        let arg = format!("--screenshot={}", shot.display());
        move || chromium(&url, &[&arg, "--window-size=1200,900"])
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 10_000, "a rendered page, not a blank image");
    p.stop().await;
}
