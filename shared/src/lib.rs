//! Types and names that the apiproxy data plane and control plane share.
//!
//! Wire types and validation, so both sides (and their tests) apply
//! exactly the same rules; the one piece of I/O is [`redis_target`], how
//! both open Redis (one server or a Sentinel set).

pub mod access;
pub mod content_hash;
pub mod mapping;
pub mod prometheus_text;
pub mod redis_keys;
pub mod redis_target;
pub mod stats;
pub mod update;

pub use content_hash::content_hash;
pub use mapping::{
    canonical_prefix, loggable_target, validate_mapping, validate_prefix, Mapping, MappingError,
    Scheme, Target, TargetParts,
};
pub use redis_keys::{RedisKeys, FAILED_KEPT};
pub use redis_target::{RedisSetupError, RedisTarget};
pub use stats::{EndpointDelta, FailedRequest, Gauges, KeyUsage, StatsBatch};
pub use update::{UpdateMessage, UpdateOp};
