//! The OpenAPI schema of the stats push body,
//! [`StatsBatch`](apiproxy_shared::StatsBatch) (SPEC §6).
//!
//! Written out with utoipa's builders because the type lives in the shared
//! crate, which has no utoipa; the limits come from the same constants the
//! validation uses, and a test checks that the schema and serde name the
//! same fields. The schema states the rules a JSON Schema can (lengths,
//! bucket counts, status classes, [`MAX_DELTA`]), each of which the
//! control plane enforces with a 400.

use std::borrow::Cow;

use apiproxy_shared::mapping::MAX_PREFIX_LEN;
use apiproxy_shared::stats::{
    BUCKETS, MAX_ERROR_TYPE_LEN, MAX_FAILED, MAX_ID_LEN, MAX_KEY_USAGE, MAX_REQUEST_ID_LEN,
    STATUS_CLASSES,
};
use utoipa::openapi::schema::{AdditionalProperties, ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;

use crate::stats_store::MAX_DELTA;

/// Stands for `StatsBatch` in the OpenAPI document.
pub(crate) struct StatsBatchSchema;

impl utoipa::PartialSchema for StatsBatchSchema {
    fn schema() -> RefOr<Schema> {
        let gauges = strict_object("The node's state when the batch was made.")
            .property("inflight", integer(0, u64::MAX))
            .required("inflight")
            .property("rss_bytes", integer(0, u64::MAX))
            .required("rss_bytes")
            .property("uptime_s", integer(0, u64::MAX))
            .required("uptime_s")
            .property("tasks", integer(0, u64::MAX));
        // MAX_ENDPOINTS is not stated as `maxProperties`: the 1 MiB body
        // limit (413) is reached first.
        let endpoints = ObjectBuilder::new()
            .description(Some(
                "Per mapping prefix: what it saw since the last acknowledged batch.",
            ))
            .additional_properties(Some(endpoint_delta()));
        let mut batch = strict_object("Deltas since the node's last acknowledged batch.");
        for (name, schema) in [
            ("node_id", id_string(None)),
            ("boot_id", id_string(Some("^[^:]*$"))),
            ("seq", integer(1, u64::MAX)),
            ("sent_at", integer(0, u64::MAX)),
            ("interval_s", ObjectBuilder::new().schema_type(Type::Number)),
            ("config_version", integer(0, u64::MAX)),
            (
                "config_hash",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(MAX_ID_LEN)),
            ),
            ("gauges", gauges),
        ] {
            batch = batch.property(name, schema).required(name);
        }
        let failed = ArrayBuilder::new()
            .description(Some(
                "Requests that failed since the last acknowledged batch, oldest first.",
            ))
            .items(failed_request())
            .max_items(Some(MAX_FAILED));
        let keys = ArrayBuilder::new()
            .description(Some(
                "Per proxy key and prefix: what the key did since the last acknowledged batch. Usage of a key that no longer exists is dropped.",
            ))
            .items(key_usage())
            .max_items(Some(MAX_KEY_USAGE));
        batch
            .property("unmatched", integer(0, MAX_DELTA))
            .property("endpoints", endpoints)
            .property("failed", failed)
            .property("keys", keys)
            .into()
    }
}

impl utoipa::ToSchema for StatsBatchSchema {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("StatsBatch")
    }
}

/// An object that refuses fields it does not name (serde's
/// `deny_unknown_fields`).
fn strict_object(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .description(Some(description))
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
}

fn integer(min: u64, max: u64) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(min))
        .maximum(Some(max))
}

fn id_string(pattern: Option<&str>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_ID_LEN))
        .pattern(pattern)
}

fn histogram(description: &str) -> ArrayBuilder {
    ArrayBuilder::new()
        .description(Some(description))
        .items(integer(0, MAX_DELTA))
        .min_items(Some(BUCKETS))
        .max_items(Some(BUCKETS))
}

/// Requests by status class, as an endpoint's or a key's deltas hold them.
fn status_classes() -> ObjectBuilder {
    let mut status = strict_object("Requests by status class (they add up to `requests`).");
    for class in STATUS_CLASSES {
        status = status.property(class, integer(0, MAX_DELTA));
    }
    status
}

fn endpoint_delta() -> ObjectBuilder {
    let mut delta = strict_object("One prefix's deltas.");
    for name in ["requests", "errors", "cancelled", "bytes_in", "bytes_out"] {
        delta = delta.property(name, integer(0, MAX_DELTA)).required(name);
    }
    for (name, description) in [
        (
            "latency_buckets",
            "Request durations per bucket (not cumulative).",
        ),
        (
            "ttfb_buckets",
            "Times to first byte per bucket (not cumulative).",
        ),
    ] {
        delta = delta.property(name, histogram(description)).required(name);
    }
    delta
        .property("status", status_classes())
        .property("latency_sum_ms", integer(0, MAX_DELTA))
}

fn key_usage() -> ObjectBuilder {
    let mut usage = strict_object("One proxy key's deltas on one prefix.");
    for (name, schema) in [
        (
            "key_id",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^key_[0-9a-f]{16}$")),
        ),
        (
            "prefix",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_PREFIX_LEN))
                .description(Some("The mapping prefix.")),
        ),
        ("requests", integer(0, MAX_DELTA)),
        ("errors", integer(0, MAX_DELTA)),
        ("bytes_in", integer(0, MAX_DELTA)),
        ("bytes_out", integer(0, MAX_DELTA)),
    ] {
        usage = usage.property(name, schema).required(name);
    }
    usage.property("status", status_classes())
}

fn failed_request() -> ObjectBuilder {
    let text = |min: usize, max: usize| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(min))
            .max_length(Some(max))
    };
    let mut failed = strict_object(
        "One request that failed: status 500 or more, a proxy error, or a client that went away (499, `cancelled`).",
    );
    for (name, schema) in [
        (
            "time",
            integer(0, u64::MAX).description(Some("When the request started, unix ms.")),
        ),
        ("request_id", text(1, MAX_REQUEST_ID_LEN)),
        (
            "prefix",
            text(1, MAX_PREFIX_LEN).description(Some("The mapping prefix, or `none`.")),
        ),
        ("status", integer(0, u16::MAX.into())),
        ("duration_ms", integer(0, u64::MAX)),
    ] {
        failed = failed.property(name, schema).required(name);
    }
    failed.property(
        "error_type",
        text(1, MAX_ERROR_TYPE_LEN).description(Some(
            "The proxy's error type; absent for an upstream's own 5xx.",
        )),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use apiproxy_shared::{EndpointDelta, FailedRequest, Gauges, KeyUsage, StatsBatch};
    use serde_json::Value;
    use utoipa::PartialSchema;

    use super::*;

    /// Every object in `value` (arrays' items too) has exactly the
    /// properties `schema` names.
    fn same_fields(value: &Value, schema: &Value, at: &str) {
        if let Value::Array(items) = value {
            for (i, item) in items.iter().enumerate() {
                same_fields(item, &schema["items"], &format!("{at}[{i}]"));
            }
            return;
        }
        let Value::Object(fields) = value else { return };
        match (&schema["properties"], &schema["additionalProperties"]) {
            (Value::Object(props), _) => {
                let mut a: Vec<_> = fields.keys().collect();
                let mut b: Vec<_> = props.keys().collect();
                a.sort();
                b.sort();
                assert_eq!(a, b, "fields of {at}");
                for (k, v) in fields {
                    same_fields(v, &props[k], &format!("{at}.{k}"));
                }
            }
            (_, Value::Object(inner)) => {
                for (k, v) in fields {
                    same_fields(v, &Value::Object(inner.clone()), &format!("{at}.{k}"));
                }
            }
            _ => panic!("no schema for {at}"),
        }
    }

    #[test]
    fn the_schema_names_every_serde_field() {
        let delta = EndpointDelta {
            status: STATUS_CLASSES.iter().map(|c| (c.to_string(), 0)).collect(),
            latency_buckets: vec![0; BUCKETS],
            ttfb_buckets: vec![0; BUCKETS],
            ..EndpointDelta::default()
        };
        let batch = StatsBatch {
            node_id: "n".into(),
            boot_id: "b".into(),
            seq: 1,
            sent_at: 0,
            interval_s: 2.0,
            config_version: 0,
            config_hash: String::new(),
            gauges: Gauges::default(),
            unmatched: 0,
            endpoints: BTreeMap::from([("/a".to_owned(), delta)]),
            keys: vec![KeyUsage {
                key_id: "key_0123456789abcdef".into(),
                prefix: "/a".into(),
                requests: 1,
                errors: 0,
                status: STATUS_CLASSES
                    .iter()
                    .map(|c| (c.to_string(), u64::from(*c == "2xx")))
                    .collect(),
                bytes_in: 2,
                bytes_out: 3,
            }],
            failed: vec![FailedRequest {
                time: 1,
                request_id: "r".into(),
                prefix: "/a".into(),
                status: 502,
                error_type: Some("upstream_connect".into()),
                duration_ms: 3,
            }],
        };
        let value = serde_json::to_value(&batch).unwrap();
        let schema = serde_json::to_value(StatsBatchSchema::schema()).unwrap();
        same_fields(&value, &schema, "StatsBatch");
        assert_eq!(schema["additionalProperties"], false);
        // The stated limits are the validation's.
        let failed = &schema["properties"]["failed"];
        assert_eq!(failed["maxItems"], MAX_FAILED);
        assert_eq!(
            failed["items"]["properties"]["error_type"]["maxLength"],
            MAX_ERROR_TYPE_LEN
        );
        let mut b = batch.clone();
        b.failed[0].error_type = Some("e".repeat(MAX_ERROR_TYPE_LEN));
        assert!(b.validate().is_ok());
        b.failed[0].error_type = Some("e".repeat(MAX_ERROR_TYPE_LEN + 1));
        assert!(b.validate().is_err());
        batch.validate().unwrap();
        let keys = &schema["properties"]["keys"];
        assert_eq!(keys["maxItems"], MAX_KEY_USAGE);
        assert_eq!(
            keys["items"]["required"].as_array().unwrap().len(),
            6,
            "all but `status` are required"
        );
    }
}
