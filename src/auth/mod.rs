//! Who is calling: JWT verification with algorithms pinned by configured keys, a bounded
//! cache of verified tokens, and the claims forwarded upstream.

mod cache;
mod jwt;

pub use cache::TokenCache;
pub use jwt::{Reject, VerifiedToken, Verifier, alg_name, unix_now};
