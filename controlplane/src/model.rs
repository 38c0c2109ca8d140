//! Request and response bodies of the admin API. The handlers return these
//! types and the OpenAPI document is derived from them, so the two cannot
//! disagree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/mappings`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewMapping {
    /// Starts with `/`, at most 256 bytes, no empty or dot segments.
    pub(crate) prefix: String,
    /// Absolute http(s) URL, no user info, query or fragment.
    pub(crate) target: String,
}

/// `PUT /api/mappings/{prefix}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTarget {
    pub(crate) target: String,
}

/// `PUT /api/mappings`: the whole new set.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AllMappings {
    pub(crate) mappings: BTreeMap<String, String>,
}

/// `POST /api/admin/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Login {
    pub(crate) token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Mapping {
    pub(crate) prefix: String,
    pub(crate) target: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MappingList {
    pub(crate) success: bool,
    pub(crate) count: usize,
    /// Every entry of the hash, as it holds them, routed or not.
    pub(crate) mappings: BTreeMap<String, String>,
    pub(crate) version: u64,
    /// The entries of `mappings` the data plane skips, each with the
    /// reason (the validation message, or the spelling of the prefix that
    /// routes instead), e.g. `{"/a?b": "prefix: must not contain ?"}`.
    /// Empty when every entry routes; only an entry written straight into
    /// Redis (by the Go version, or by hand) can be listed here.
    pub(crate) invalid: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MappingChanged {
    pub(crate) success: bool,
    pub(crate) message: String,
    pub(crate) mapping: Mapping,
    pub(crate) version: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MappingFound {
    pub(crate) success: bool,
    pub(crate) mapping: Mapping,
    /// Whether the data plane routes this entry.
    pub(crate) valid: bool,
    /// Only when `valid` is false: why the data plane skips it, as in
    /// [`MappingList::invalid`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MappingDeleted {
    pub(crate) success: bool,
    /// `Mapping deleted successfully`, the Go version's text.
    pub(crate) message: String,
    pub(crate) prefix: String,
    pub(crate) version: u64,
}

/// `GET /api/public/mappings`: the Go version's public list (no version).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PublicMappingList {
    pub(crate) success: bool,
    pub(crate) count: usize,
    pub(crate) mappings: BTreeMap<String, String>,
}

/// `POST /api/mappings/reload`, in the Go version's shape.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Reloaded {
    /// `Mappings reloaded successfully`.
    pub(crate) message: String,
    /// The current mappings version (a reload does not change it).
    pub(crate) version: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AuditList {
    pub(crate) entries: Vec<crate::store::AuditEntry>,
}

/// `GET /api/requests/failed`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FailedList {
    pub(crate) success: bool,
    /// Newest first, across the fleet.
    pub(crate) requests: Vec<crate::stats_store::FailedRecord>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Success {
    pub(crate) success: bool,
}

/// `POST /api/admin/login` when the token is right.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct LoggedIn {
    pub(crate) success: bool,
    /// `Authentication successful`, the Go version's text.
    pub(crate) message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Readiness {
    pub(crate) ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
}

/// Every error of this API.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// Always false.
    pub(crate) success: bool,
    pub(crate) error: String,
}

/// `GET /stats` (SPEC §5): the Go version's fields and more. `total` and
/// `endpoints` count requests that matched a mapping.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatsReport {
    pub(crate) total: u64,
    /// Upstream 5xx and the proxy's own 5xx; never 4xx nor cancellations.
    pub(crate) errors: u64,
    /// Requests that matched no mapping (not in `total`).
    pub(crate) unmatched: u64,
    /// Requests the client abandoned (counted in `total` too).
    pub(crate) cancelled: u64,
    /// Per mapping prefix that has seen traffic.
    pub(crate) endpoints: BTreeMap<String, EndpointStats>,
    pub(crate) performance: Performance,
    pub(crate) series: SeriesReport,
    pub(crate) nodes: NodeCounts,
    /// The Go version's field: the mean request duration since the stats
    /// began, as a Go duration string (`"12.3ms"`, `"1.5s"`, `"0s"`).
    pub(crate) avg_response: String,
    /// The Go version's field: stats events dropped. Always 0: nothing
    /// countable is dropped (a node keeps its deltas until a push is
    /// acknowledged; the control plane applies a batch whole or refuses it).
    pub(crate) dropped_events: u64,
    /// The Go version's field: the newest proxied requests (at most
    /// 10,000), cluster-wide, newest last. `timestamp` is the second the
    /// control plane applied the batch that carried the request.
    pub(crate) requests: Vec<RequestRecord>,
}

/// One entry of [`StatsReport::requests`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct RequestRecord {
    /// Unix seconds.
    pub(crate) timestamp: u64,
    /// The mapping prefix.
    pub(crate) endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct EndpointStats {
    pub(crate) count: u64,
    pub(crate) error_count: u64,
    /// Unix seconds when a batch last carried a request for it (as the Go
    /// version had it); 0: never.
    pub(crate) last_request: u64,
    /// The same in unix ms.
    pub(crate) last_request_ms: u64,
    /// Median duration estimated from the histogram; 0 with no requests.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Body bytes received from clients.
    pub(crate) bytes_in: u64,
    /// Body bytes sent to clients.
    pub(crate) bytes_out: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct Performance {
    /// Over about the last minute, all endpoints.
    pub(crate) requests_per_sec: f64,
    /// Mean request duration since the stats began.
    pub(crate) avg_response_time_ms: f64,
    /// Over every endpoint's histogram; 0 with no requests.
    pub(crate) p99_response_time_ms: f64,
    /// Percent: `errors / total × 100`; 0 when `total` is 0.
    pub(crate) error_rate: f64,
    /// Resident memory of the nodes that are not down, MiB.
    pub(crate) memory_usage_mb: f64,
    /// The Go version's field. Here: the async tasks alive across the
    /// nodes that are not down (each request and connection is one).
    pub(crate) goroutine_count: u64,
}

/// Request series, oldest first; buckets with no request are left out.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SeriesReport {
    /// Up to 1440 one-minute buckets: the last 24 hours.
    pub(crate) minute: Vec<SeriesPoint>,
    /// Up to 720 one-hour buckets: the last 30 days.
    pub(crate) hour: Vec<SeriesPoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub(crate) struct SeriesPoint {
    /// Bucket start, unix seconds.
    pub(crate) t: u64,
    pub(crate) count: u64,
    pub(crate) errors: u64,
    pub(crate) p99_ms: f64,
}

/// How many registered nodes are in each state.
#[derive(Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct NodeCounts {
    pub(crate) up: usize,
    pub(crate) stale: usize,
    pub(crate) down: usize,
}

/// `GET /api/nodes`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NodeList {
    /// Sorted by `node_id`.
    pub(crate) nodes: Vec<NodeInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct NodeInfo {
    pub(crate) node_id: String,
    /// Changes each time the node's process starts.
    pub(crate) boot_id: String,
    /// The mappings version the node serves.
    pub(crate) config_version: u64,
    pub(crate) config_hash: String,
    /// Unix ms of the node's last applied batch.
    pub(crate) last_seen: u64,
    pub(crate) state: NodeState,
    pub(crate) inflight: u64,
    pub(crate) rss_bytes: u64,
    /// Requests served since the node booted.
    pub(crate) requests_total: u64,
    pub(crate) uptime_s: u64,
    /// Async tasks alive in the node.
    pub(crate) tasks: u64,
}

/// `down`: no batch for `API_PROXY_NODE_TIMEOUT`; `stale`: pushing, but
/// not serving the current mappings version; else `up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum NodeState {
    Up,
    Stale,
    Down,
}
