//! Types and names that the apiproxy data plane and control plane share.
//!
//! Wire types and validation only: nothing in this crate does I/O, so both
//! sides (and their tests) apply exactly the same rules.

pub mod mapping;

pub use mapping::{validate_mapping, validate_prefix, Mapping, MappingError, Scheme, Target};
