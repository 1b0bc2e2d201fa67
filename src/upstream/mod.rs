//! Upstream replicas and the connections doorman keeps to them.

mod group;
mod pool;

pub use pool::{ConnPool, RequestBody, SendError, UpstreamBody, UpstreamBodyError};

pub use group::{InFlight, Sticky, Upstream, UpstreamGroup};
