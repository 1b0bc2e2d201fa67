//! The server: listeners, the accept loops, the connection limit, TLS accept, serving a
//! connection and the graceful drain. `run(listeners, snapshot, shutdown)` takes shutdown as
//! a future so tests, signals and reloads share one path.
//!
//! - `listeners`: binding the sockets and their socket options
//! - `run`: the server's life: accept loops started, reloads applied, the drain
//! - `accept`: one accept loop, the connection limit, TLS accept
//! - `serve`: a connection on the h1 codec or hyper's HTTP/2, each request through the pipeline
//! - `drive`: a connection run to its end under the drain, deadlines and idle timeout

mod accept;
mod drive;
mod listeners;
mod run;
mod serve;

pub use crate::admin::BoundAddrs;
pub use listeners::Listeners;
pub use run::{run, run_reloadable};
