//! The stats batch a data plane pushes to `POST /internal/stats` (SPEC §6),
//! the histogram bounds both sides use, and the quantile estimate the
//! console reads from them.
//!
//! A batch carries deltas, not totals: the control plane adds them once per
//! `(node_id, boot_id, seq)`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency and TTFB histograms, in seconds; a last
/// bucket (+Inf) follows them. The same bounds as the Prometheus histograms.
pub const LATENCY_BOUNDS: [f64; 18] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

/// Buckets per histogram in a batch: the bounds plus +Inf.
pub const BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// Status classes, in the order of [`EndpointDelta::status`]'s keys.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The bucket (index into a batch's bucket array) a duration falls in.
pub fn bucket_index(seconds: f64) -> usize {
    LATENCY_BOUNDS
        .iter()
        .position(|&bound| seconds <= bound)
        .unwrap_or(LATENCY_BOUNDS.len())
}

/// One push: everything a node recorded since its last acknowledged batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsBatch {
    pub node_id: String,
    /// Random per process start: a restarted node starts a new `seq` run.
    pub boot_id: String,
    /// 1 for the first batch of a boot, +1 after each acknowledged one.
    pub seq: u64,
    /// Unix seconds when (re)sent.
    pub sent_at: u64,
    /// The push interval, seconds.
    pub interval_s: f64,
    /// The mappings version the node serves.
    pub config_version: u64,
    /// [`crate::content_hash`] of the mappings the node serves.
    pub config_hash: String,
    pub gauges: Gauges,
    /// Requests that matched no mapping (refused, not ready, no mapping).
    #[serde(default)]
    pub unmatched: u64,
    /// Per mapping prefix; prefixes with nothing new are left out.
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointDelta>,
    /// Requests that failed since the last acknowledged batch, oldest
    /// first, at most [`MAX_FAILED`] (the node keeps only its newest).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedRequest>,
    /// Per proxy key and prefix; pairs with nothing new are left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyUsage>,
}

/// Most key × prefix pairs one batch may carry: about 260 KiB of JSON,
/// which with the most endpoints a data plane sends (about 250 KiB) stays
/// under the control plane's 1 MiB body limit. A node sends the rest in
/// its next batch.
pub const MAX_KEY_USAGE: usize = 2_000;

/// What one proxy key did on one prefix since the last acknowledged batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyUsage {
    pub key_id: String,
    pub prefix: String,
    pub requests: u64,
    /// As [`EndpointDelta::errors`].
    pub errors: u64,
    /// Requests by status class; classes with no requests are left out.
    #[serde(default)]
    pub status: BTreeMap<String, u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Most failed requests one batch may carry, and how many a node keeps.
pub const MAX_FAILED: usize = 100;
/// Longest `request_id` accepted (the data plane keeps a client's id only
/// up to this length).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Longest `error_type` accepted.
pub const MAX_ERROR_TYPE_LEN: usize = 64;

/// One request that failed: a status of 500 or more, a proxy error, or a
/// client that went away (`status` 499, `error_type` `cancelled`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedRequest {
    /// When the request started, unix milliseconds.
    pub time: u64,
    pub request_id: String,
    /// The mapping prefix, or `none` for a request no mapping took.
    pub prefix: String,
    pub status: u16,
    /// The proxy's error type (SPEC §3 `type`, or `cancelled`); absent for
    /// an upstream's own 5xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    pub duration_ms: u64,
}

/// The node's state when the batch was made (absolute values, not deltas).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gauges {
    pub inflight: u64,
    pub rss_bytes: u64,
    pub uptime_s: u64,
    /// Tasks alive in the node's async runtime (the nearest figure to the
    /// Go version's goroutine count). 0 from a node that does not send it.
    #[serde(default)]
    pub tasks: u64,
}

/// What one prefix saw since the last acknowledged batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointDelta {
    pub requests: u64,
    /// 5xx responses (the upstream's or the proxy's own) and upstream
    /// failures after the head; never client cancellations.
    pub errors: u64,
    /// Requests by status class; classes with no requests are left out.
    #[serde(default)]
    pub status: BTreeMap<String, u64>,
    pub cancelled: u64,
    /// Body bytes received from clients.
    pub bytes_in: u64,
    /// Body bytes sent to clients.
    pub bytes_out: u64,
    /// Sum of the request durations, milliseconds (for averages).
    #[serde(default)]
    pub latency_sum_ms: u64,
    /// Counts per bucket of [`LATENCY_BOUNDS`] and +Inf (not cumulative).
    pub latency_buckets: Vec<u64>,
    pub ttfb_buckets: Vec<u64>,
}

/// Why a batch is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("field `{0}` must not be empty")]
    Empty(&'static str),
    #[error("field `{0}` is longer than {1} bytes")]
    TooLong(&'static str, usize),
    #[error("field `seq` must be at least 1")]
    Seq,
    #[error("endpoint `{0}` is not a valid prefix")]
    Prefix(String),
    #[error("endpoint `{prefix}`: `{field}` must hold {BUCKETS} counts")]
    Buckets { prefix: String, field: &'static str },
    #[error("endpoint `{prefix}`: unknown status class `{class}`")]
    StatusClass { prefix: String, class: String },
    #[error("endpoint `{0}`: the status classes do not add up to `requests`")]
    StatusSum(String),
    #[error("endpoint `{0}`: `errors` is larger than `requests`")]
    Errors(String),
    #[error("too many endpoints (at most {0})")]
    TooManyEndpoints(usize),
    #[error("too many failed requests (at most {0})")]
    TooManyFailed(usize),
    #[error("failed request {0}: {1}")]
    Failed(usize, &'static str),
    #[error("too many key usage entries (at most {0})")]
    TooManyKeys(usize),
    #[error("key usage {0}: {1}")]
    Key(usize, &'static str),
}

/// Longest `node_id`, `boot_id` and `config_hash` accepted.
pub const MAX_ID_LEN: usize = 128;
/// Most endpoints one batch may carry.
pub const MAX_ENDPOINTS: usize = 10_000;

impl StatsBatch {
    /// Checks what serde cannot: lengths, the prefix rules, bucket shapes
    /// and that the counts agree with each other.
    pub fn validate(&self) -> Result<(), BatchError> {
        for (field, value) in [
            ("node_id", &self.node_id),
            ("boot_id", &self.boot_id),
            ("config_hash", &self.config_hash),
        ] {
            if value.len() > MAX_ID_LEN {
                return Err(BatchError::TooLong(field, MAX_ID_LEN));
            }
        }
        if self.node_id.is_empty() {
            return Err(BatchError::Empty("node_id"));
        }
        if self.boot_id.is_empty() {
            return Err(BatchError::Empty("boot_id"));
        }
        if self.seq == 0 {
            return Err(BatchError::Seq);
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(BatchError::TooManyEndpoints(MAX_ENDPOINTS));
        }
        if self.failed.len() > MAX_FAILED {
            return Err(BatchError::TooManyFailed(MAX_FAILED));
        }
        for (i, f) in self.failed.iter().enumerate() {
            f.validate().map_err(|why| BatchError::Failed(i, why))?;
        }
        if self.keys.len() > MAX_KEY_USAGE {
            return Err(BatchError::TooManyKeys(MAX_KEY_USAGE));
        }
        for (i, k) in self.keys.iter().enumerate() {
            k.validate().map_err(|why| BatchError::Key(i, why))?;
        }
        for (prefix, e) in &self.endpoints {
            if crate::validate_prefix(prefix).is_err() {
                return Err(BatchError::Prefix(prefix.clone()));
            }
            for (field, buckets) in [
                ("latency_buckets", &e.latency_buckets),
                ("ttfb_buckets", &e.ttfb_buckets),
            ] {
                if buckets.len() != BUCKETS {
                    return Err(BatchError::Buckets {
                        prefix: prefix.clone(),
                        field,
                    });
                }
            }
            let mut sum = 0u64;
            for (class, n) in &e.status {
                if !STATUS_CLASSES.contains(&class.as_str()) {
                    return Err(BatchError::StatusClass {
                        prefix: prefix.clone(),
                        class: class.clone(),
                    });
                }
                sum = sum.saturating_add(*n);
            }
            if sum != e.requests {
                return Err(BatchError::StatusSum(prefix.clone()));
            }
            if e.errors > e.requests {
                return Err(BatchError::Errors(prefix.clone()));
            }
        }
        Ok(())
    }
}

impl FailedRequest {
    /// What serde cannot check: lengths and the prefix.
    fn validate(&self) -> Result<(), &'static str> {
        // As a data plane keeps or makes them: nothing a console could
        // show as something else (spaces, control or bidi characters).
        let printable = |s: &str, max| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
        };
        if !printable(&self.request_id, MAX_REQUEST_ID_LEN) {
            return Err("`request_id` must be 1 to 128 printable ASCII characters");
        }
        if self.prefix != "none" && crate::validate_prefix(&self.prefix).is_err() {
            return Err("`prefix` is neither a valid prefix nor `none`");
        }
        if self
            .error_type
            .as_deref()
            .is_some_and(|t| !printable(t, MAX_ERROR_TYPE_LEN))
        {
            return Err("`error_type` must be 1 to 64 printable ASCII characters");
        }
        Ok(())
    }
}

impl KeyUsage {
    /// What serde cannot check: the id, the prefix and that the counts
    /// agree.
    fn validate(&self) -> Result<(), &'static str> {
        if !crate::access::is_key_id(&self.key_id) {
            return Err("`key_id` is not a key id");
        }
        if crate::validate_prefix(&self.prefix).is_err() {
            return Err("`prefix` is not a valid prefix");
        }
        let mut sum = 0u64;
        for (class, n) in &self.status {
            if !STATUS_CLASSES.contains(&class.as_str()) {
                return Err("unknown status class");
            }
            sum = sum.saturating_add(*n);
        }
        if sum != self.requests {
            return Err("the status classes do not add up to `requests`");
        }
        if self.errors > self.requests {
            return Err("`errors` is larger than `requests`");
        }
        Ok(())
    }
}

/// The `q` quantile (0..=1) of a histogram given as per-bucket counts over
/// [`LATENCY_BOUNDS`] and +Inf, in seconds, interpolated linearly inside
/// its bucket the way Prometheus' `histogram_quantile` does. The +Inf bucket
/// reports the last bound. `None` for an empty histogram.
pub fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &count) in buckets.iter().enumerate() {
        let upto = below + count;
        if count > 0 && upto as f64 >= rank {
            let Some(&upper) = LATENCY_BOUNDS.get(i) else {
                return Some(LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1]);
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_BOUNDS[i - 1] };
            let within = (rank - below as f64) / count as f64;
            return Some(lower + (upper - lower) * within);
        }
        below = upto;
    }
    Some(LATENCY_BOUNDS[LATENCY_BOUNDS.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(requests: u64) -> EndpointDelta {
        EndpointDelta {
            requests,
            status: BTreeMap::from([("2xx".to_owned(), requests)]),
            latency_buckets: vec![0; BUCKETS],
            ttfb_buckets: vec![0; BUCKETS],
            ..EndpointDelta::default()
        }
    }

    fn failed(prefix: &str) -> FailedRequest {
        FailedRequest {
            time: 1_700_000_000_000,
            request_id: "r-1".into(),
            prefix: prefix.into(),
            status: 502,
            error_type: Some("upstream_connect".into()),
            duration_ms: 3,
        }
    }

    fn batch() -> StatsBatch {
        StatsBatch {
            node_id: "dp-1".into(),
            boot_id: "b".into(),
            seq: 1,
            sent_at: 0,
            interval_s: 2.0,
            config_version: 3,
            config_hash: "h".into(),
            gauges: Gauges::default(),
            unmatched: 0,
            endpoints: BTreeMap::from([("/openai".to_owned(), endpoint(4))]),
            keys: Vec::new(),
            failed: vec![failed("/openai")],
        }
    }

    #[test]
    fn buckets_follow_the_bounds() {
        assert_eq!(bucket_index(0.0), 0);
        assert_eq!(bucket_index(0.005), 0);
        assert_eq!(bucket_index(0.0051), 1);
        assert_eq!(bucket_index(3600.0), 17);
        assert_eq!(bucket_index(3600.1), 18);
        assert_eq!(bucket_index(f64::NAN), 18);
    }

    #[test]
    fn a_valid_batch_round_trips() {
        let b = batch();
        b.validate().unwrap();
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(serde_json::from_str::<StatsBatch>(&json).unwrap(), b);
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let mut b = batch();
        b.seq = 0;
        assert_eq!(b.validate(), Err(BatchError::Seq));

        let mut b = batch();
        b.endpoints
            .get_mut("/openai")
            .unwrap()
            .latency_buckets
            .pop();
        assert!(b
            .validate()
            .unwrap_err()
            .to_string()
            .contains("latency_buckets"));

        let mut b = batch();
        b.endpoints.insert("openai".into(), endpoint(1));
        assert_eq!(b.validate(), Err(BatchError::Prefix("openai".into())));

        let mut b = batch();
        b.endpoints.get_mut("/openai").unwrap().requests = 5;
        assert_eq!(b.validate(), Err(BatchError::StatusSum("/openai".into())));

        let mut b = batch();
        b.endpoints.get_mut("/openai").unwrap().errors = 5;
        assert_eq!(b.validate(), Err(BatchError::Errors("/openai".into())));

        let mut b = batch();
        b.node_id.clear();
        assert_eq!(b.validate(), Err(BatchError::Empty("node_id")));

        let mut b = batch();
        b.failed = vec![failed("/openai"); MAX_FAILED + 1];
        assert_eq!(b.validate(), Err(BatchError::TooManyFailed(MAX_FAILED)));

        let mut b = batch();
        b.failed.push(failed("openai"));
        assert!(matches!(b.validate(), Err(BatchError::Failed(1, _))));
        b.failed[1].prefix = "none".into();
        b.validate().unwrap();
        b.failed[1].request_id = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        assert!(matches!(b.validate(), Err(BatchError::Failed(1, _))));
        b.failed[1].request_id = "looks\u{202e}1-di".into();
        assert!(matches!(b.validate(), Err(BatchError::Failed(1, _))));
        b.failed[1].request_id = "r-2".into();
        b.failed[1].error_type = Some("with space".into());
        assert!(matches!(b.validate(), Err(BatchError::Failed(1, _))));

        assert!(serde_json::from_str::<StatsBatch>(r#"{"node_id":"x","bogus":1}"#).is_err());
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let mut b = vec![0; BUCKETS];
        assert_eq!(quantile(&b, 0.5), None);
        b[0] = 100; // all in (0, 5 ms]
        assert!((quantile(&b, 0.5).unwrap() - 0.0025).abs() < 1e-9);
        b[0] = 0;
        b[4] = 50; // (50, 100] ms
        b[5] = 50; // (100, 250] ms
        assert!((quantile(&b, 0.5).unwrap() - 0.1).abs() < 1e-9);
        assert!((quantile(&b, 0.99).unwrap() - (0.1 + 0.15 * 0.98)).abs() < 1e-9);
        b[BUCKETS - 1] = 1_000;
        assert_eq!(quantile(&b, 0.99), Some(3600.0));
    }
}
