//! The corral host agent: owns every VM on this host and everything done to them.
//!
//! A request from any front end (CLI, web console, another host) arrives through the API as a
//! call on [`Agent`]. The agent validates it against host facts (networks, repositories,
//! templates, memory), starts a task, and hands VM-specific work to that VM's actor
//! ([`vm::actor`]): one tokio task per VM that alone mutates the VM's record and talks to its
//! QEMU process over QMP, so operations on one VM are serialized and state transitions are
//! checked in one place. Actors publish a read-only snapshot (`VmInfo`) that lists and shows
//! read without queueing behind long operations. Durable state lives in a [`corral_store::Store`];
//! QEMU processes outlive the agent and are re-attached at start ([`Agent::start`]).

pub mod advice;
pub mod answers;
pub mod auth;
pub mod cgroup;
mod clock;
pub mod config;
pub mod confine;
pub mod context;
pub mod error;
pub mod events;
pub mod files;
pub mod host;
pub mod intents;
pub mod keys;
pub mod migrate;
pub mod network;
pub mod ops;
pub mod pool;
/// Kept at the crate root for front ends that stream archives.
pub use ops::transfer;
mod registry;
pub mod spec;
pub mod stats;
pub mod tasks;
pub mod templates;
pub mod vm;
pub mod vmfiles;

mod agent;
pub use agent::{Agent, VmOutcome};
pub use clock::now_ms;
pub use error::Error;
