//! Upstream replicas and the connections doorman keeps to them: the group (`group.rs`,
//! probed by `health.rs`), one keep-alive pool per replica (`pool.rs`) of connections
//! (`conn.rs`), a request sent on one (`exchange.rs`) and its response body (`body.rs`).

mod body;
mod conn;
mod exchange;
mod group;
mod health;
mod pool;

pub(crate) use body::{UpstreamBody, UpstreamBodyError};
pub(crate) use exchange::{RequestBody, SendError};
pub(crate) use group::{InFlight, Upstream, UpstreamGroup};
