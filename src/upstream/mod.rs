//! Upstream replicas and the connections doorman keeps to them.

mod client;
mod pool;

pub use client::{ConnPool, RequestBody, SendError, UpstreamBody, UpstreamBodyError};

pub use pool::{InFlight, Sticky, Upstream, UpstreamGroup};
