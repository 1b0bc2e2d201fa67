//! Weighted round robin: a precomputed smooth schedule walked by one atomic counter.
//!
//! The schedule is nginx's "smooth weighted round robin" sequence (weights 5,1,1 give
//! a a b a c a a, not a a a a a b c), reduced by the weights' gcd and computed once when the
//! snapshot is built. Selecting is then one relaxed `fetch_add` and an index: no lock, no
//! allocation, and exact shares over every full cycle.

use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct RoundRobin {
    schedule: Vec<u32>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// `weights[i]` is server i's weight; weight 0 means the server gets no traffic.
    pub fn new(weights: &[u32]) -> Self {
        RoundRobin {
            schedule: smooth_schedule(weights),
            next: AtomicUsize::new(0),
        }
    }

    /// The index of the server for the next request, or None when every weight is 0.
    #[inline]
    pub fn select(&self) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.schedule[n % self.schedule.len()] as usize)
    }

    /// The next index for which `usable` holds, trying at most one full cycle.
    #[inline]
    pub(crate) fn select_where(&self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        (0..self.schedule.len())
            .filter_map(|_| self.select())
            .find(|i| usable(*i))
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    let reduced: Vec<i64> = weights.iter().map(|w| i64::from(w / g)).collect();
    let total: i64 = reduced.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in reduced.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(rr: &RoundRobin, n: usize) -> Vec<usize> {
        (0..n).map(|_| rr.select().unwrap()).collect()
    }

    #[test]
    fn equal_weights_take_turns() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        assert_eq!(take(&rr, 7), vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn weights_are_interleaved_smoothly() {
        let rr = RoundRobin::new(&[5, 1, 1]);
        assert_eq!(take(&rr, 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weights_are_reduced_by_gcd() {
        let rr = RoundRobin::new(&[200, 100]);
        assert_eq!(
            rr.schedule.len(),
            3,
            "one cycle: the sum of gcd-reduced weights"
        );
        assert_eq!(take(&rr, 6), vec![0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn zero_weight_servers_are_skipped() {
        let rr = RoundRobin::new(&[0, 2, 0, 1]);
        let picks = take(&rr, 300);
        assert_eq!(picks.iter().filter(|i| **i == 1).count(), 200);
        assert_eq!(picks.iter().filter(|i| **i == 3).count(), 100);
    }

    #[test]
    fn all_zero_weights_select_nothing() {
        assert_eq!(RoundRobin::new(&[0, 0]).select(), None);
        assert_eq!(RoundRobin::new(&[]).select(), None);
    }
}
