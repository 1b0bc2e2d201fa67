//! Who is calling: JWT verification with algorithms pinned by configured keys, a bounded
//! cache of verified tokens, and the claims forwarded upstream.

mod cache;
mod jwt;

pub use jwt::{Reject, VerifiedToken, Verifier, unix_now};
