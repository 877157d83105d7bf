//! One module per command group; each is a thin layer over the client (or, for `serve`, over
//! the agent and API crates).

pub mod auth;
pub mod console;
pub mod install;
pub mod measure;
pub mod misc;
pub mod p2v;
pub mod p2v_media;
pub mod plan;
pub mod pool;
pub mod serve;
pub mod stats;
pub mod transfer;
pub mod vm;
