//! The label types of every metric family and how their values are written.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

/// A label value shared rather than copied (route prefixes, group names).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(crate) struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, w: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        w.write_str(&self.0)
    }
}

/// A replica address, or "-" when no replica was involved.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) struct Replica(pub Option<SocketAddr>);

impl EncodeLabelValue for Replica {
    fn encode(&self, w: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self.0 {
            Some(a) => write!(w, "{a}"),
            None => w.write_str("-"),
        }
    }
}

/// The method, folded into a fixed set.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)]
pub(crate) enum MethodLabel {
    GET,
    HEAD,
    POST,
    PUT,
    PATCH,
    DELETE,
    OPTIONS,
    OTHER,
}

impl MethodLabel {
    pub(crate) fn of(m: &http::Method) -> Self {
        match *m {
            http::Method::GET => Self::GET,
            http::Method::HEAD => Self::HEAD,
            http::Method::POST => Self::POST,
            http::Method::PUT => Self::PUT,
            http::Method::PATCH => Self::PATCH,
            http::Method::DELETE => Self::DELETE,
            http::Method::OPTIONS => Self::OPTIONS,
            _ => Self::OTHER,
        }
    }
}

/// 1xx … 5xx: holds the class only, so 200 and 204 are one series.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) struct StatusClass(pub(super) u16);

impl StatusClass {
    pub(crate) fn of(status: u16) -> Self {
        StatusClass(status / 100)
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, w: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(w, "{}xx", self.0)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub route: Name,
    pub method: MethodLabel,
    pub status: StatusClass,
    pub upstream: Replica,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub route: Name,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReplicaLabels {
    pub group: Name,
    pub replica: Replica,
}

/// A Redis node, as `host:port`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct NodeLabels {
    pub node: Name,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GroupLabels {
    pub group: Name,
}

/// An outcome from a fixed vocabulary (ok, a failure reason, hit/miss, ...).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub outcome: &'static str,
}

/// A state-store operation, or the feature a store failure was let through for.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OpLabels {
    pub op: &'static str,
}

/// What kind of stored state an eviction or refusal concerned.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ProtocolLabels {
    pub protocol: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ConfigLabels {
    pub hash: String,
}
