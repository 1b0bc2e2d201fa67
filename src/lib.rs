//! doorman — a layer-7 reverse proxy and load balancer for stateless replicas.
//!
//! The request path, in the order a request meets it:
//!
//! ```text
//! server      accept (connection limit) → TLS 1.3 (tls: stock rustls, SNI, ALPN)
//!             → h1 (doorman's HTTP/1.1 codec) or hyper's HTTP/2
//! pipeline    stages(): limits → normalise → route → auth → idempotency begin → select
//!             → forward (one loop, retries where safe) → idempotency finish → complete
//! ```
//!
//! Layers, imports pointing down only:
//!
//! ```text
//! bin/doorman, demo, compare                the binary and its tools
//! server                                    listeners, connections, drain, reloads applied
//! admin · reload                            the admin listener; preparing a new snapshot
//! pipeline                                  the stages
//! snapshot                                  one immutable configuration, swapped whole
//! auth · store · balance · upstream · metrics
//! h1 · tls · config · idle · error          codec, TLS config, proxy.toml, idle detection
//! service_notify                            sd_notify(3): ready, reloading, stopping
//! message                                   HTTP vocabulary (normal forms, the one
//!                                           Content-Length parser, hop-by-hop, request ids)
//! ```
//!
//! Within a row a module may use another of its row, never one above it. The public surface
//! is what the binary, the integration tests, the benchmarks and the fuzz targets use: the
//! modules holding it are `pub`, with only those items `pub` in them; everything else is
//! `pub(crate)` or private, so `unreachable_pub` and `dead_code` keep it honest.

#![warn(unreachable_pub)]

pub mod admin;
pub mod auth;
pub mod balance;
pub mod compare;
pub mod config;
pub mod demo;
mod error;
mod h1;
mod idle;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod pipeline;
pub mod reload;
pub mod server;
pub mod service_notify;
pub mod snapshot;
pub mod store;
mod tls;
mod upstream;

/// Entry points for the fuzz targets in `fuzz/` — not an API. Thin wrappers over the
/// crate-private wire parsers (the targets must exercise the real code, not copies), with
/// public mirrors of their `pub(crate)` result types.
#[doc(hidden)]
pub mod fuzzing {
    use bytes::{Bytes, BytesMut};
    use http::{HeaderMap, StatusCode, Version};

    pub use crate::h1::{BodyError, Connection, HeadError, Limits, RequestBody};

    use crate::h1::client::{self, ResponseFraming};
    use crate::h1::{Decoded, Decoder, Framing};

    /// `h1::client::ResponseFraming`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum BodyEnd {
        Empty,
        Length(u64),
        Chunked,
        Close,
    }

    /// What `h1::client::parse_response` returns for a complete head.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct UpstreamHead {
        pub status: StatusCode,
        pub version: Version,
        pub headers: HeaderMap,
        pub framing: BodyEnd,
        pub keep_alive: bool,
    }

    /// `h1::client::parse_response`: the replica's response head at the start of `buf`.
    pub fn parse_response(
        buf: &mut BytesMut,
        head_request: bool,
        max: usize,
    ) -> Result<Option<UpstreamHead>, &'static str> {
        let parsed = client::parse_response(buf, head_request, max)?;
        Ok(parsed.map(|(resp, meta)| {
            let (parts, ()) = resp.into_parts();
            UpstreamHead {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                framing: match meta.framing {
                    ResponseFraming::Empty => BodyEnd::Empty,
                    ResponseFraming::Length(n) => BodyEnd::Length(n),
                    ResponseFraming::Chunked => BodyEnd::Chunked,
                    ResponseFraming::Close => BodyEnd::Close,
                },
                keep_alive: meta.keep_alive,
            }
        }))
    }

    /// `h1::Decoder`: a body delimited by Content-Length or chunked, as both the downstream
    /// connection and the upstream client decode them.
    #[derive(Debug, Clone, Copy)]
    pub struct BodyDecoder(Decoder);

    /// One step of `BodyDecoder::decode`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Piece {
        Data,
        End,
    }

    impl BodyDecoder {
        pub fn empty() -> Self {
            BodyDecoder(Decoder::new(Framing::Empty))
        }

        pub fn length(n: u64) -> Self {
            BodyDecoder(Decoder::new(Framing::Length(n)))
        }

        pub fn chunked() -> Self {
            BodyDecoder(Decoder::new(Framing::Chunked))
        }

        pub fn decode(
            &mut self,
            buf: &mut BytesMut,
            out: &mut Bytes,
        ) -> Result<Option<Piece>, &'static str> {
            Ok(self.0.decode(buf, out)?.map(|d| match d {
                Decoded::Data => Piece::Data,
                Decoded::End => Piece::End,
            }))
        }

        pub fn finished(&self) -> bool {
            self.0.finished()
        }
    }

    /// Each master's `host:port` and inclusive slot ranges.
    pub type MasterSlots = Vec<(String, Vec<(u16, u16)>)>;

    /// The cluster session's `CLUSTER SHARDS` reader over one RESP value as a node sends
    /// it: each master's address and slot ranges. None when the bytes are not one value.
    pub fn cluster_shards(resp: &[u8], tls: bool) -> Option<Result<MasterSlots, String>> {
        let v = redis::parse_redis_value(resp).ok()?;
        Some(crate::store::parse_cluster_shards(v, tls))
    }
}
