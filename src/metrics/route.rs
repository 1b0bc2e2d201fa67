//! A route's handles (`RouteMetrics`): its duration histogram and a table of request
//! counters, so recording a request hashes no labels; and those of requests matching no route.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::Metrics;
use super::labels::{MethodLabel, Name, Replica, RequestLabels, RouteLabels, StatusClass};

/// Methods × status classes (`status / 100`, 1 … 9 for the codes hyper accepts).
const METHOD_LABELS: usize = 8;
const STATUS_CLASSES: usize = 10;
/// Routes over groups larger than this count requests through the family lookup: the
/// route's table of handles stays small.
const ROUTE_TABLE_REPLICAS: usize = 32;

/// A route's metric handles, resolved when its snapshot is built: the duration histogram,
/// and the request counters, one per method × status class × replica (or none), each
/// resolved the first time it is counted. The series are the same as through the families.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    pub label: Name,
    duration: Histogram,
    /// The group's replicas in order: a counter's slot is its position + 1 (0: none).
    replicas: Vec<SocketAddr>,
    requests: Box<[OnceLock<Counter>]>,
}

impl RouteMetrics {
    /// `replicas`: the route's group, in order.
    pub(crate) fn new(m: &Metrics, label: Arc<str>, mut replicas: Vec<SocketAddr>) -> Self {
        let label = Name(label);
        if replicas.len() > ROUTE_TABLE_REPLICAS {
            replicas = Vec::new();
        }
        let slots = METHOD_LABELS * STATUS_CLASSES * (replicas.len() + 1);
        RouteMetrics {
            duration: m
                .request_duration
                .get_or_create(&RouteLabels {
                    route: label.clone(),
                })
                .clone(),
            label,
            requests: (0..slots).map(|_| OnceLock::new()).collect(),
            replicas,
        }
    }

    /// Where the counter for these labels sits in the table; None: not in it.
    fn slot(
        &self,
        method: MethodLabel,
        class: StatusClass,
        upstream: Option<SocketAddr>,
    ) -> Option<usize> {
        let replica = match upstream {
            None => 0,
            Some(a) => self.replicas.iter().position(|r| *r == a)? + 1,
        };
        let class = usize::from(class.0);
        (class < STATUS_CLASSES).then(|| {
            (method as usize * STATUS_CLASSES + class) * (self.replicas.len() + 1) + replica
        })
    }

    /// Count one answered request and observe its duration.
    pub(crate) fn record(
        &self,
        m: &Metrics,
        method: MethodLabel,
        status: u16,
        upstream: Option<SocketAddr>,
        took: std::time::Duration,
    ) {
        self.duration.observe(took.as_secs_f64());
        let class = StatusClass::of(status);
        let labels = || RequestLabels {
            route: self.label.clone(),
            method,
            status: class,
            upstream: Replica(upstream),
        };
        match self.slot(method, class, upstream) {
            Some(i) => self.requests[i]
                .get_or_init(|| m.requests.get_or_create(&labels()).clone())
                .inc(),
            None => m.requests.get_or_create(&labels()).inc(),
        };
    }
}

impl Metrics {
    /// The handles for requests that matched no route.
    pub(crate) fn no_route(&self) -> &RouteMetrics {
        self.no_route
            .get_or_init(|| RouteMetrics::new(self, "-".into(), Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn route_handles_count_into_the_same_series_as_the_family() {
        let m = Metrics::new();
        let a: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:9002".parse().unwrap();
        let outside: SocketAddr = "127.0.0.1:9009".parse().unwrap();
        let r = RouteMetrics::new(&m, "/api/".into(), vec![a, b]);
        let ms = std::time::Duration::from_millis(1);
        r.record(&m, MethodLabel::GET, 200, Some(a), ms);
        r.record(&m, MethodLabel::GET, 204, Some(a), ms);
        r.record(&m, MethodLabel::GET, 200, Some(b), ms);
        r.record(&m, MethodLabel::POST, 404, None, ms);
        // Not in the group (the table has no slot for it): counted through the family.
        r.record(&m, MethodLabel::GET, 502, Some(outside), ms);
        m.no_route().record(&m, MethodLabel::GET, 404, None, ms);

        let count = |route: &str, method, status, upstream| {
            m.requests
                .get_or_create(&RequestLabels {
                    route: Name(route.into()),
                    method,
                    status: StatusClass::of(status),
                    upstream: Replica(upstream),
                })
                .get()
        };
        assert_eq!(count("/api/", MethodLabel::GET, 200, Some(a)), 2);
        assert_eq!(count("/api/", MethodLabel::GET, 200, Some(b)), 1);
        assert_eq!(count("/api/", MethodLabel::POST, 404, None), 1);
        assert_eq!(count("/api/", MethodLabel::GET, 502, Some(outside)), 1);
        assert_eq!(count("-", MethodLabel::GET, 404, None), 1);
        assert_eq!(count("/api/", MethodLabel::GET, 500, Some(a)), 0);

        let text = m.encode();
        assert_eq!(
            line(
                &text,
                "doorman_request_duration_seconds_count{route=\"/api/\"}"
            ),
            Some("doorman_request_duration_seconds_count{route=\"/api/\"} 5")
        );
        assert_eq!(
            line(&text, "doorman_request_duration_seconds_count{route=\"-\"}"),
            Some("doorman_request_duration_seconds_count{route=\"-\"} 1")
        );
    }

    #[test]
    fn a_group_larger_than_the_table_counts_through_the_family() {
        let m = Metrics::new();
        let many: Vec<SocketAddr> = (0..=ROUTE_TABLE_REPLICAS as u16)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 10_000 + i)))
            .collect();
        let r = RouteMetrics::new(&m, "/big/".into(), many.clone());
        assert_eq!(r.requests.len(), METHOD_LABELS * STATUS_CLASSES);
        let last = *many.last().unwrap();
        r.record(
            &m,
            MethodLabel::PUT,
            201,
            Some(last),
            std::time::Duration::ZERO,
        );
        let got = m
            .requests
            .get_or_create(&RequestLabels {
                route: Name("/big/".into()),
                method: MethodLabel::PUT,
                status: StatusClass::of(201),
                upstream: Replica(Some(last)),
            })
            .get();
        assert_eq!(got, 1);
    }
}
