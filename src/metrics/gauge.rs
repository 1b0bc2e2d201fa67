//! `GaugeGuard`: a gauge counted up while a value lives (connections, in-flight requests).

use prometheus_client::metrics::gauge::Gauge;

/// Counts a value in a gauge while alive (connections, in-flight requests).
#[derive(Debug)]
pub(crate) struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub(crate) fn new(g: Gauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
