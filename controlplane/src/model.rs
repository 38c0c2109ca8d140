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
