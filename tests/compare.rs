//! `doorman compare` end to end: the binary runs every comparison on a small workload and
//! writes a report whose figures hold what the modes promise.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_doorman");

/// Run compare with a small, fast workload; returns report.md and the output dir.
fn compare(extra: &[&str]) -> (String, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(BIN)
        .args([
            "compare",
            "--requests",
            "600",
            "--keys",
            "60",
            "--replicas",
            "3",
            "--concurrency",
            "6",
            "--service-time",
            "0s",
            "--out",
        ])
        .arg(out.path())
        .args(extra)
        .status()
        .unwrap();
    assert!(status.success(), "compare exited with {status}");
    for svg in ["load-spread.svg", "failover.svg"] {
        let text = std::fs::read_to_string(out.path().join(svg)).unwrap();
        assert!(
            text.starts_with("<svg"),
            "{svg}: {}",
            &text[..40.min(text.len())]
        );
        assert!(text.trim_end().ends_with("</svg>"), "{svg} is complete");
    }
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    (report, out)
}

/// The cells of the table rows whose first cells are `first`.
fn rows<'a>(report: &'a str, first: &[&str]) -> Vec<Vec<&'a str>> {
    report
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect::<Vec<_>>()
        })
        .filter(|cells| cells.len() >= first.len() && cells[..first.len()] == *first)
        .collect()
}

fn one<'a>(report: &'a str, first: &[&str]) -> Vec<&'a str> {
    let r = rows(report, first);
    assert_eq!(r.len(), 1, "one row for {first:?} in:\n{report}");
    r.into_iter().next().unwrap()
}

#[test]
fn compare_reports_spread_remapping_and_failover() {
    let (report, _dir) = compare(&[]);
    for keys in ["uniform", "zipf s=1"] {
        for mode in [
            "round robin",
            "consistent hash",
            "consistent hash, bounded 1.25",
        ] {
            let r = one(&report, &[keys, mode]);
            assert_eq!(r[2], "600", "{keys}/{mode}: requests");
            assert_eq!(r[3], "0", "{keys}/{mode}: errors");
        }
        // Round robin: exactly even, whatever the keys.
        let rr = one(&report, &[keys, "round robin"]);
        assert_eq!(rr[7], "1.00");
        assert_eq!(rr[9], "33 / 33 / 33");
        // Plain consistent hashing never moves a key while the replica set is stable.
        assert_eq!(one(&report, &[keys, "consistent hash"])[10], "0 (0.0%)");
    }
    // Adding a replica to a ring moves keys only to the new one; removing one moves only
    // its keys.
    for change in ["add a replica (3 → 4)", "remove a replica (3 → 2)"] {
        let r = one(&report, &[change, "consistent hash"]);
        assert_eq!(r[5], "0", "{change}: needless moves");
        let moved: usize = r[2].parse().unwrap();
        assert!(
            moved > 0 && moved < 60,
            "{change}: {moved} of 60 keys moved"
        );
    }
    // A replica killed mid-run: no client error in either mode, and on the ring no key of
    // a surviving replica moved.
    for mode in ["round robin", "consistent hash"] {
        let f = one(&report, &[mode, "600"]);
        assert_eq!(f[2], "0", "{mode}: client errors");
    }
    assert_eq!(one(&report, &["consistent hash", "600"])[7], "0");
    assert!(report.contains("![load spread per replica](load-spread.svg)"));
}

#[test]
fn compare_takes_group_tuning_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("c.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("c.key"), ck.signing_key.serialize_pem()).unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[tls.certificates]]\ncert = \"{0}/c.crt\"\nkey = \"{0}/c.key\"\n\
             [upstreams.api]\nservers = [{{ address = \"127.0.0.1:9\" }}]\nbalance = \"consistent_hash\"\n\
             hash_key = \"cookie:sid\"\nhash_balance_factor = 1.5\nvirtual_nodes = 40\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let (report, _out) = compare(&["--config", config.to_str().unwrap()]);
    let r = one(&report, &["zipf s=1", "consistent hash, bounded 1.5"]);
    assert_eq!(r[3], "0");
    assert!(report.contains(&format!("--config {}", config.display())));
}
