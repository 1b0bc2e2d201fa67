//! Load balancing as pure data: built from a group's server list off the hot path, then
//! `select()` answers which replica takes the next request.

mod ring;
mod round_robin;

pub use ring::{Ring, key_hash};
pub use round_robin::RoundRobin;
