//! Wire and domain types shared by every corral crate.
//!
//! Everything that crosses a boundary (API bodies, store records, task and event payloads) is
//! defined here, with units in field names (`memory_bytes`, `size_bytes`) and validation of the
//! values a user controls (`validate` module). Front ends parse user text into these types,
//! the agent checks them once more against host facts, and the store persists them as JSON.
//! This crate depends on serde only, so every other crate can use it; the `schema` feature
//! adds `schemars::JsonSchema` derives, from which corral-api generates its OpenAPI document.

pub mod api;
pub mod auth;
pub mod error;
pub mod event;
pub mod host;
pub mod install;
pub mod migrate;
pub mod pool;
pub mod size;
pub mod stats;
pub mod task;
pub mod time;
pub mod transfer;
pub mod validate;
pub mod vm;

pub use error::{ApiError, ErrorKind};
pub use size::{format_size, parse_size};
pub use vm::*;
