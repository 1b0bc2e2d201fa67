//! HTTP vocabulary shared by every layer: the request target's normal form and host
//! matching. Knows nothing of the pipeline, upstreams or errors.

pub mod content_length;
pub mod target;
