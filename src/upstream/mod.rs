//! Upstream replicas and the connections doorman keeps to them.

mod client;
mod group;

pub use client::{ConnPool, RequestBody, SendError, UpstreamBody, UpstreamBodyError};

pub use group::{InFlight, Sticky, Upstream, UpstreamGroup};
