//! Who is calling: JWT verification with algorithms pinned by configured keys (static, or
//! from the identity provider's key set, refreshed in the background), a bounded cache of
//! verified tokens, and the claims forwarded upstream.

mod cache;
mod json;
mod jwks;
mod jwt;

pub(crate) use jwks::FetchCounter;
pub use jwt::{Reject, VerifiedToken, Verifier, unix_now};
