//! Consistent hashing: a ketama-style ring with virtual nodes per unit of weight.
//!
//! Points are `xxh3("{address}#{n}")` — a stable hash of the server list only, so two doorman
//! instances with the same config map every key to the same replica. A lookup is a binary
//! search over the sorted points and a walk to the next distinct usable replica: no
//! allocation. A replica that may not take a key (drained, over its load cap, later: down) is
//! skipped, so only its own keys move.

use std::net::SocketAddr;

use xxhash_rust::xxh3::xxh3_64;

#[derive(Debug)]
pub struct Ring {
    /// (point, server index), sorted by point.
    points: Vec<(u64, u32)>,
}

/// The stable hash of a request's key, as placed on the ring.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64(key)
}

impl Ring {
    /// `servers[i]` = (address, weight); weight 0 puts no points on the ring.
    pub fn new(servers: &[(SocketAddr, u32)], virtual_nodes: u32) -> Self {
        let mut points = Vec::new();
        for (i, (addr, weight)) in servers.iter().enumerate() {
            for n in 0..weight.saturating_mul(virtual_nodes) {
                points.push((xxh3_64(format!("{addr}#{n}").as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The first replica clockwise from `hash` for which `usable` holds.
    #[inline]
    pub fn pick(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(p, _)| *p < hash);
        let n = self.points.len();
        (0..n)
            .map(|k| self.points[(start + k) % n].1 as usize)
            .find(|s| usable(*s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(n: usize) -> Vec<(SocketAddr, u32)> {
        (0..n)
            .map(|i| (format!("10.0.0.{}:8080", i + 1).parse().unwrap(), 1))
            .collect()
    }

    fn mapping(ring: &Ring, keys: usize) -> Vec<usize> {
        (0..keys)
            .map(|k| {
                ring.pick(key_hash(format!("user-{k}").as_bytes()), |_| true)
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn two_instances_with_the_same_config_agree_on_every_key() {
        let a = Ring::new(&servers(7), 160);
        let b = Ring::new(&servers(7), 160);
        assert_eq!(mapping(&a, 10_000), mapping(&b, 10_000));
    }

    #[test]
    fn adding_one_replica_moves_about_one_in_n_plus_one_keys() {
        for n in [3usize, 5, 10] {
            let before = mapping(&Ring::new(&servers(n), 160), 10_000);
            let after = mapping(&Ring::new(&servers(n + 1), 160), 10_000);
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64;
            let expected = 10_000.0 / (n as f64 + 1.0);
            assert!(
                (moved - expected).abs() <= 0.2 * expected,
                "n={n}: moved {moved}, expected {expected} ±20%"
            );
            // Every moved key went to the new replica.
            assert!(
                before.iter().zip(&after).all(|(a, b)| a == b || *b == n),
                "a key moved between old replicas"
            );
        }
    }

    #[test]
    fn removing_a_replica_moves_only_its_keys() {
        let all = servers(6);
        let before = mapping(&Ring::new(&all, 160), 10_000);
        let mut fewer = all.clone();
        fewer[2].1 = 0; // drained: no points
        let after = mapping(&Ring::new(&fewer, 160), 10_000);
        for (b, a) in before.iter().zip(&after) {
            if *b != 2 {
                assert_eq!(a, b, "a key of a surviving replica moved");
            } else {
                assert_ne!(*a, 2);
            }
        }
    }

    #[test]
    fn an_unusable_replica_is_skipped_and_only_its_keys_move() {
        let ring = Ring::new(&servers(5), 160);
        let before = mapping(&ring, 10_000);
        for (k, b) in before.iter().enumerate() {
            let a = ring
                .pick(key_hash(format!("user-{k}").as_bytes()), |s| s != 3)
                .unwrap();
            if *b == 3 {
                assert_ne!(a, 3);
            } else {
                assert_eq!(a, *b);
            }
        }
        assert_eq!(ring.pick(1, |_| false), None);
    }

    #[test]
    fn weights_scale_the_share() {
        let mut s = servers(2);
        s[0].1 = 3;
        let m = mapping(&Ring::new(&s, 160), 20_000);
        let share0 = m.iter().filter(|x| **x == 0).count() as f64 / 20_000.0;
        assert!((share0 - 0.75).abs() < 0.05, "{share0}");
    }
}
