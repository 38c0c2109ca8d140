//! The route handlers, one module per part of the API (SPEC §5, §6). Each
//! takes what it needs through [`crate::extract`]; only
//! [`crate::router`] names them all.

pub(crate) mod audit;
pub(crate) mod failures;
pub(crate) mod health;
pub(crate) mod key_usage;
pub(crate) mod keys;
pub(crate) mod mappings;
pub(crate) mod policies;
pub(crate) mod session;
pub(crate) mod stats;
