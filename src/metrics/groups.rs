//! An upstream group's handles, per replica (`ReplicaMetrics`) and per group
//! (`GroupMetrics`), and dropping the series of those a reload removed.

use std::collections::HashSet;
use std::net::SocketAddr;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::labels::{GroupLabels, Name, Replica, ReplicaLabels};
use super::{Metrics, lock};

/// A replica's metric handles, resolved once per group build.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaMetrics {
    pub selections: Counter,
    pub ejections: Counter,
    pub connect_errors: Counter,
    pub timeouts: Counter,
    pub upstream_duration: Histogram,
    /// Answers from this replica (any status) and 5xx/failed ones, for the status page.
    pub answered: Counter,
    pub failed: Counter,
}

/// A group's metric handles.
#[derive(Debug, Clone)]
pub(crate) struct GroupMetrics {
    pub retries: Counter,
    pub retry_budget_exhausted: Counter,
    pub hash_fallbacks: Counter,
    pub bounded_load_spills: Counter,
}

impl Metrics {
    /// Handles for one replica of `group`.
    pub(crate) fn replica(&self, group: &Name, addr: SocketAddr) -> ReplicaMetrics {
        let l = ReplicaLabels {
            group: group.clone(),
            replica: Replica(Some(addr)),
        };
        lock(&self.known_replicas).insert(l.clone());
        ReplicaMetrics {
            selections: self.selections.get_or_create(&l).clone(),
            ejections: self.ejections.get_or_create(&l).clone(),
            connect_errors: self.connect_errors.get_or_create(&l).clone(),
            timeouts: self.upstream_timeouts.get_or_create(&l).clone(),
            upstream_duration: self.upstream_duration.get_or_create(&l).clone(),
            answered: self.answered.get_or_create(&l).clone(),
            failed: self.failed.get_or_create(&l).clone(),
        }
    }

    pub(crate) fn group(&self, group: &Name) -> GroupMetrics {
        let l = GroupLabels {
            group: group.clone(),
        };
        lock(&self.known_groups).insert(l.clone());
        GroupMetrics {
            retries: self.retries.get_or_create(&l).clone(),
            retry_budget_exhausted: self.retry_budget_exhausted.get_or_create(&l).clone(),
            hash_fallbacks: self.hash_fallbacks.get_or_create(&l).clone(),
            bounded_load_spills: self.bounded_load_spills.get_or_create(&l).clone(),
        }
    }

    /// After a reload: drop the series of replicas and groups no longer configured, so
    /// they neither linger as flat lines nor pile up as addresses change. Series of those
    /// that stayed keep counting.
    pub(crate) fn retain<'a>(
        &self,
        replicas: impl IntoIterator<Item = (&'a Name, SocketAddr)>,
        groups: impl IntoIterator<Item = &'a Name>,
    ) {
        let live: HashSet<ReplicaLabels> = replicas
            .into_iter()
            .map(|(group, address)| ReplicaLabels {
                group: group.clone(),
                replica: Replica(Some(address)),
            })
            .collect();
        let mut known = lock(&self.known_replicas);
        for gone in known.difference(&live) {
            self.selections.remove(gone);
            self.ejections.remove(gone);
            self.connect_errors.remove(gone);
            self.upstream_timeouts.remove(gone);
            self.upstream_duration.remove(gone);
            self.replica_up.remove(gone);
            self.replica_in_flight.remove(gone);
            self.answered.remove(gone);
            self.failed.remove(gone);
        }
        *known = live;
        let live: HashSet<GroupLabels> = groups
            .into_iter()
            .map(|group| GroupLabels {
                group: group.clone(),
            })
            .collect();
        let mut known = lock(&self.known_groups);
        for gone in known.difference(&live) {
            self.retries.remove(gone);
            self.retry_budget_exhausted.remove(gone);
            self.hash_fallbacks.remove(gone);
            self.bounded_load_spills.remove(gone);
        }
        *known = live;
    }
}
