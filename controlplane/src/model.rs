//! Request and response bodies of the admin API. The handlers return these
//! types and the OpenAPI document is derived from them, so the two cannot
//! disagree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/mappings`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMapping {
    /// Starts with `/`, at most 256 bytes, no empty or dot segments.
    pub prefix: String,
    /// Absolute http(s) URL, no user info, query or fragment.
    pub target: String,
}

/// `PUT /api/mappings/{prefix}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTarget {
    pub target: String,
}

/// `PUT /api/mappings`: the whole new set.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllMappings {
    pub mappings: BTreeMap<String, String>,
}

/// `POST /api/admin/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Mapping {
    pub prefix: String,
    pub target: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MappingList {
    pub success: bool,
    pub count: usize,
    pub mappings: BTreeMap<String, String>,
    pub version: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MappingChanged {
    pub success: bool,
    pub message: String,
    pub mapping: Mapping,
    pub version: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MappingFound {
    pub success: bool,
    pub mapping: Mapping,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MappingDeleted {
    pub success: bool,
    pub prefix: String,
    pub version: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    pub entries: Vec<crate::store::AuditEntry>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Success {
    pub success: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Every error of this API.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always false.
    pub success: bool,
    pub error: String,
}

/// `GET /stats` (SPEC §5): the Go version's fields and more. `total` and
/// `endpoints` count requests that matched a mapping.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsReport {
    pub total: u64,
    /// Upstream 5xx and the proxy's own 5xx; never 4xx nor cancellations.
    pub errors: u64,
    /// Requests that matched no mapping (not in `total`).
    pub unmatched: u64,
    /// Requests the client abandoned (counted in `total` too).
    pub cancelled: u64,
    /// Per mapping prefix that has seen traffic.
    pub endpoints: BTreeMap<String, EndpointStats>,
    pub performance: Performance,
    pub series: SeriesReport,
    pub nodes: NodeCounts,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct EndpointStats {
    pub count: u64,
    pub error_count: u64,
    /// Unix ms when a batch last carried a request for it; 0: never.
    pub last_request: u64,
    /// Median duration estimated from the histogram; 0 with no requests.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Body bytes received from clients.
    pub bytes_in: u64,
    /// Body bytes sent to clients.
    pub bytes_out: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Performance {
    /// Over about the last minute, all endpoints.
    pub requests_per_sec: f64,
    /// Mean request duration since the stats began.
    pub avg_response_time_ms: f64,
    /// Over every endpoint's histogram; 0 with no requests.
    pub p99_response_time_ms: f64,
    /// Percent: `errors / total × 100`; 0 when `total` is 0.
    pub error_rate: f64,
    /// Resident memory of the nodes that are not down, MiB.
    pub memory_usage_mb: f64,
}

/// Request series, oldest first; buckets with no request are left out.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeriesReport {
    /// Up to 1440 one-minute buckets: the last 24 hours.
    pub minute: Vec<SeriesPoint>,
    /// Up to 720 one-hour buckets: the last 30 days.
    pub hour: Vec<SeriesPoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SeriesPoint {
    /// Bucket start, unix seconds.
    pub t: u64,
    pub count: u64,
    pub errors: u64,
    pub p99_ms: f64,
}

/// How many registered nodes are in each state.
#[derive(Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct NodeCounts {
    pub up: usize,
    pub stale: usize,
    pub down: usize,
}

/// `GET /api/nodes`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    /// Sorted by `node_id`.
    pub nodes: Vec<NodeInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct NodeInfo {
    pub node_id: String,
    /// Changes each time the node's process starts.
    pub boot_id: String,
    /// The mappings version the node serves.
    pub config_version: u64,
    pub config_hash: String,
    /// Unix ms of the node's last applied batch.
    pub last_seen: u64,
    pub state: NodeState,
    pub inflight: u64,
    pub rss_bytes: u64,
    /// Requests served since the node booted.
    pub requests_total: u64,
    pub uptime_s: u64,
}

/// `down`: no batch for `API_PROXY_NODE_TIMEOUT`; `stale`: pushing, but
/// not serving the current mappings version; else `up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Up,
    Stale,
    Down,
}
