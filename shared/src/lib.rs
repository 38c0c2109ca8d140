//! Types and names that the apiproxy data plane and control plane share.
//!
//! Wire types and validation only: nothing in this crate does I/O, so both
//! sides (and their tests) apply exactly the same rules.

pub mod access;
pub mod content_hash;
pub mod mapping;
pub mod prometheus_text;
pub mod redis_keys;
pub mod stats;
pub mod update;

pub use content_hash::content_hash;
pub use mapping::{
    canonical_prefix, loggable_target, validate_mapping, validate_prefix, Mapping, MappingError,
    Scheme, Target, TargetParts,
};
pub use redis_keys::{RedisKeys, FAILED_KEPT};
pub use stats::{EndpointDelta, FailedRequest, Gauges, KeyUsage, StatsBatch};
pub use update::{UpdateMessage, UpdateOp};
