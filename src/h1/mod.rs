//! doorman's HTTP/1.1 codec: the downstream connection (`Connection`), request heads and
//! bodies, the response on the wire, upgrades and replayed IO, protocol sniffing, and the
//! upstream side's wire format (`client`). It knows bytes, heads and framing; what a
//! request means, and how a refused head is answered, is its caller's.

mod body;
pub(crate) mod client;
mod conn;
#[cfg(test)]
mod conn_tests;
mod encode;
mod feed;
mod head;
mod rewind;
mod sniff;
mod upgrade;

pub use body::BodyError;
pub use body::RequestBody;
pub(crate) use body::{Decoded, Decoder};
pub use conn::{Connection, Limits};
pub(crate) use head::Framing;
pub use head::HeadError;
pub(crate) use rewind::Rewind;
pub(crate) use sniff::{Sniffed, sniff};
pub(crate) use upgrade::OnUpgrade;
