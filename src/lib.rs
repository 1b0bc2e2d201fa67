//! doorman — a layer-7 reverse proxy and load balancer for stateless replicas.
//!
//! The request path, in the order a request meets it:
//!
//! ```text
//! server      accept (connection limit) → TLS 1.3 (tls: SNI, ALPN h2|http/1.1)
//!             → h1 (doorman's HTTP/1.1 codec) or hyper's HTTP/2
//! pipeline    handle(): limits → route → auth → idempotency → select (balance)
//!             → forward (upstream, retries where safe) → complete
//! ```
//!
//! Modules, one concern each:
//! - [`config`]   proxy.toml: raw serde shape, validated in one pass into typed values
//! - [`snapshot`] one immutable, fully built configuration behind one `ArcSwap`
//! - [`reload`]   SIGHUP / POST /reload: prepare a new snapshot beside the old, then swap
//! - [`server`]   listeners, accept loops, connection serving, idle watchdog, graceful drain
//! - [`h1`]       the downstream HTTP/1.1 codec: heads, bodies, keep-alive, upgrades
//! - [`tls`]      rustls server config: TLS 1.3 only, SNI, ALPN; key schedule; corked handshake
//! - [`pipeline`] the request stages and the per-request context
//! - [`auth`]     JWT verification (algorithms pinned by configured keys) and its token cache
//! - [`store`]    shared state: revocation view and idempotency records (Redis or embedded)
//! - [`balance`]  load balancing as pure data (weighted round robin, consistent-hash ring)
//! - [`upstream`] replica groups: keep-alive pools, health, in-flight counts, retry budget
//! - [`message`]  HTTP vocabulary: the request target's normal form, host matching
//! - [`error`]    the one error type and its one mapping to HTTP status
//! - [`idle`]     idle detection: IO activity counting and the quiet-period watchdog
//! - [`metrics`]  Prometheus metrics, one set per running proxy, carried across reloads
//! - [`admin`]    /health, /ready and POST /revocations on the admin listener
//! - [`demo`]     `doorman demo`: three replicas, an in-memory certificate, the proxy
//! - [`compare`]  `doorman compare`: round robin vs consistent hash on local replicas, a report

pub mod admin;
pub mod auth;
pub mod balance;
pub mod compare;
pub mod config;
pub mod demo;
pub mod error;
pub mod h1;
pub mod idle;
pub mod message;
pub mod metrics;
pub mod pipeline;
pub mod reload;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod tls;
pub mod upstream;
