//! Upstream replicas and the connections doorman keeps to them.

mod pool;

pub use pool::{InFlight, Sticky, Upstream, UpstreamGroup, UpstreamRequestBody};
