//! The announcement published on the updates channel after every change.
//!
//! Receivers treat any payload as "re-read the mappings": the message only
//! says that something changed, the hash in Redis says what. The structured
//! form helps logs and lets a receiver skip a version it already has.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateOp {
    Upsert,
    Delete,
    Replace,
    /// A proxy key was created, changed or deleted (`key_id` names it).
    Key,
    /// A mapping's policy was set or removed (`prefix` names it).
    Policy,
}

/// `{"version": N, "op": "upsert"|"delete"|"replace"|"policy", "prefix":
/// "/x"}` or `{"version": N, "op": "key", "key_id": "key_…"}`; an `upsert`
/// may carry the new `target`, so that nodes apply it without reading it.
/// A node that does not know an op re-reads everything, as for any other
/// payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateMessage {
    pub version: u64,
    pub op: UpdateOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The target an `upsert` wrote (it may hold credentials: never log
    /// it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl UpdateMessage {
    /// A mapping change: `upsert`, `delete` (with the prefix) or `replace`.
    pub fn mapping(version: u64, op: UpdateOp, prefix: Option<&str>) -> UpdateMessage {
        UpdateMessage {
            version,
            op,
            prefix: prefix.map(str::to_owned),
            key_id: None,
            target: None,
        }
    }

    /// An `upsert` of `prefix` that carries its new `target`.
    pub fn upsert(version: u64, prefix: &str, target: &str) -> UpdateMessage {
        UpdateMessage {
            target: Some(target.to_owned()),
            ..UpdateMessage::mapping(version, UpdateOp::Upsert, Some(prefix))
        }
    }

    /// A proxy key was created, changed or deleted.
    pub fn key(version: u64, key_id: &str) -> UpdateMessage {
        UpdateMessage {
            version,
            op: UpdateOp::Key,
            prefix: None,
            key_id: Some(key_id.to_owned()),
            target: None,
        }
    }

    /// The policy of `prefix` was set or removed.
    pub fn policy(version: u64, prefix: &str) -> UpdateMessage {
        UpdateMessage::mapping(version, UpdateOp::Policy, Some(prefix))
    }

    /// Parses a payload; `None` for anything else (the Go version publishes
    /// the bare string `mapping_added`), which still means "re-read".
    pub fn parse(payload: &[u8]) -> Option<UpdateMessage> {
        serde_json::from_slice(payload).ok()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_anything_else() {
        let m = UpdateMessage::mapping(7, UpdateOp::Upsert, Some("/x"));
        assert_eq!(m.to_json(), r#"{"version":7,"op":"upsert","prefix":"/x"}"#);
        assert_eq!(UpdateMessage::parse(m.to_json().as_bytes()), Some(m));
        let with_target = UpdateMessage::upsert(7, "/x", "https://x.test/v1");
        assert_eq!(
            with_target.to_json(),
            r#"{"version":7,"op":"upsert","prefix":"/x","target":"https://x.test/v1"}"#
        );
        assert_eq!(
            UpdateMessage::parse(with_target.to_json().as_bytes()),
            Some(with_target)
        );
        let replace = UpdateMessage::parse(br#"{"version":8,"op":"replace"}"#).unwrap();
        assert_eq!(replace.prefix, None);
        let key = UpdateMessage::parse(br#"{"version":9,"op":"key","key_id":"key_1"}"#).unwrap();
        assert_eq!(
            (key.op, key.key_id.as_deref()),
            (UpdateOp::Key, Some("key_1"))
        );
        assert_eq!(UpdateMessage::parse(b"mapping_added"), None);
        assert_eq!(UpdateMessage::parse(b""), None);
    }
}
