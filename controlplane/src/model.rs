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
    /// `replicated`: the Redis primary has a replica, and a stats batch
    /// is acknowledged (204) only once `WAIT` confirmed a replica holds it.
    /// `primary_only`: no replica, so a batch is acknowledged once the
    /// primary holds it, and losing the primary loses the newest.
    pub(crate) stats_durability: crate::stats_store::Durability,
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

/// `POST /api/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewKey {
    /// 1 to 100 characters, no control characters.
    pub(crate) name: String,
    /// Mapping prefixes the key may be used on (1 to 100); absent or null:
    /// all.
    #[serde(default)]
    pub(crate) prefixes: Option<Vec<String>>,
    /// Unix seconds, in the future; absent or null: never expires.
    #[serde(default)]
    pub(crate) expires_at: Option<u64>,
}

/// `PATCH /api/keys/{id}`: only the fields present change (`name` and
/// `enabled` may not be null).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyPatch {
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub(crate) name: Option<String>,
    /// null: all prefixes.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub(crate) prefixes: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    pub(crate) enabled: Option<bool>,
    /// Unix seconds, in the future; null: never expires.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub(crate) expires_at: Option<Option<u64>>,
}

/// A field that is present: `Some` of its value, `Some(None)` for null
/// where `T` is an `Option` (else null is refused); the default, `None`,
/// stands for absent.
fn present<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    T::deserialize(d).map(Some)
}

/// A proxy key as the API shows it: never its secret nor its hash.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyView {
    /// `key_` and 16 hex digits.
    pub(crate) id: String,
    pub(crate) name: String,
    /// null: all prefixes.
    #[schema(required)]
    pub(crate) prefixes: Option<Vec<String>>,
    pub(crate) enabled: bool,
    /// Unix seconds; null: never.
    #[schema(required)]
    pub(crate) expires_at: Option<u64>,
    /// Unix seconds.
    pub(crate) created_at: u64,
    /// Unix seconds of the stats batch that last reported a use (coarse);
    /// null: never used.
    #[schema(required)]
    pub(crate) last_used_at: Option<u64>,
}

/// `GET /api/keys`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyList {
    pub(crate) success: bool,
    /// By `created_at`, then `id`.
    pub(crate) keys: Vec<KeyView>,
}

/// `POST /api/keys`: the only answer that holds the secret.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyCreated {
    pub(crate) success: bool,
    pub(crate) key: KeyView,
    /// `apx-` and 43 base64url characters; shown only here.
    pub(crate) secret: String,
}

/// `GET` and `PATCH /api/keys/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct KeyFound {
    pub(crate) success: bool,
    pub(crate) key: KeyView,
}

/// `DELETE /api/keys/{id}` and `DELETE /api/policies/{prefix}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Deleted {
    pub(crate) success: bool,
    /// The key id, or the policy's prefix.
    pub(crate) deleted: String,
}

/// `PUT /api/policies/{prefix}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewPolicy {
    #[schema(schema_with = access_schema)]
    pub(crate) access: apiproxy_shared::access::Access,
    /// The upstream's real credential, put in place of the client's own;
    /// absent or null: none.
    #[serde(default)]
    pub(crate) upstream_credential: Option<NewCredential>,
}

/// Exactly one of `header` (with an optional `template`) and `query`.
/// `Debug` leaves the secret out: it must never reach a log line.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewCredential {
    /// A header name, e.g. `Authorization`, `x-api-key`.
    #[serde(default)]
    #[schema(nullable = false)]
    pub(crate) header: Option<String>,
    /// The header's value, holding `{secret}` once (default `{secret}`).
    #[serde(default)]
    #[schema(nullable = false)]
    pub(crate) template: Option<String>,
    /// A query parameter name, e.g. `key`.
    #[serde(default)]
    #[schema(nullable = false)]
    pub(crate) query: Option<String>,
    /// The upstream's key (write-only). Absent: the stored one is kept.
    #[serde(default)]
    #[schema(nullable = false)]
    pub(crate) secret: Option<String>,
}

impl std::fmt::Debug for NewCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCredential")
            .field("header", &self.header)
            .field("template", &self.template)
            .field("query", &self.query)
            .field("secret", &self.secret.as_ref().map(|_| "…"))
            .finish()
    }
}

fn access_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(["open", "key"]))
        .description(Some(
            "`open`: anyone; `key`: a proxy key allowed on the prefix",
        ))
        .build()
}

/// A policy as the API shows it: the credential's secret only as its
/// last four characters.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PolicyView {
    pub(crate) prefix: String,
    #[schema(schema_with = access_schema)]
    pub(crate) access: apiproxy_shared::access::Access,
    /// null: none.
    #[schema(required)]
    pub(crate) upstream_credential: Option<CredentialView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CredentialView {
    /// Lower-case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) query: Option<String>,
    /// `…` and the secret's last four characters.
    pub(crate) secret_hint: String,
}

/// `GET /api/policies`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PolicyList {
    pub(crate) success: bool,
    /// By prefix.
    pub(crate) policies: Vec<PolicyView>,
}

/// `GET /api/policies/{prefix}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PolicyFound {
    pub(crate) success: bool,
    pub(crate) policy: PolicyView,
}

/// `PUT /api/policies/{prefix}`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PolicySaved {
    pub(crate) success: bool,
    pub(crate) policy: PolicyView,
    /// No policy existed before this one: Go-version nodes on the same
    /// Redis know nothing of policies and must be retired (they would
    /// serve keyed mappings openly, without the credential).
    pub(crate) first_policy: bool,
}
