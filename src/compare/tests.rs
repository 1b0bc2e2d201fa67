//! Unit tests of the comparison's figures: load spread, key affinity across replica
//! changes, latency quantiles.

use super::*;

fn sample(key: u32, replica: u16, ok: bool) -> Sample {
    Sample {
        key,
        replica: Some(replica),
        status: if ok { 200 } else { 502 },
        start_us: 0,
        latency_us: 1000,
    }
}

#[test]
fn spread_figures() {
    let r = LoadResult {
        population: "uniform".into(),
        mode: Mode::RoundRobin,
        requests: 400,
        errors: 0,
        elapsed: Duration::from_secs(2),
        p50_ms: 1.0,
        p99_ms: 2.0,
        per_replica: vec![100, 100, 100, 100],
        affinity_violations: 0,
    };
    assert_eq!(r.rps(), 200.0);
    assert_eq!(r.max_over_mean(), 1.0);
    assert_eq!(r.cv(), 0.0);
    let skewed = LoadResult {
        per_replica: vec![250, 50, 50, 50],
        ..r
    };
    assert_eq!(skewed.max_over_mean(), 2.5);
    // mean 100, deviations 150, -50, -50, -50 → sd = sqrt(30000/4) ≈ 86.6
    assert!((skewed.cv() - 0.866).abs() < 0.001, "{}", skewed.cv());
}

#[test]
fn affinity_counts_moves_from_each_keys_first_replica() {
    let s = [
        sample(1, 0, true),
        sample(2, 1, true),
        sample(1, 0, true),
        sample(1, 2, true),  // moved
        sample(2, 3, false), // failed: not a landing
        sample(2, 1, true),
        sample(2, 0, true), // moved
    ];
    let (moved, home) = affinity(&s);
    assert_eq!(moved, [false, false, false, true, false, false, true]);
    assert_eq!(home[&1], 0);
    assert_eq!(home[&2], 1);
    let r = load_result(
        "u".into(),
        Mode::ConsistentHash,
        &s,
        4,
        Duration::from_secs(1),
    );
    assert_eq!(r.errors, 1);
    assert_eq!(r.per_replica, vec![3, 2, 1, 0]);
    assert_eq!(r.affinity_violations, 2);
}

#[test]
fn nearest_rank_quantiles() {
    let s: Vec<Sample> = (1..=100)
        .map(|i| Sample {
            latency_us: i * 1000,
            ..sample(0, 0, true)
        })
        .collect();
    let refs: Vec<&Sample> = s.iter().collect();
    assert_eq!(quantile_ms(&refs, 0.5), 50.0);
    assert_eq!(quantile_ms(&refs, 0.99), 99.0);
    assert_eq!(quantile_ms(&[], 0.99), 0.0);
}
