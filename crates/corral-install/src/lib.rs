//! Install sources for corral: where a guest operating system comes from and how its installer
//! is started.
//!
//! - [`templates`]: the catalogue of OS templates (built-in TOML, user files, osinfo-db) with
//!   `derived_from` inheritance and the restrictions `vm create`/`vm install` enforce.
//! - [`tree`]: pure install-tree detection over a [`tree::Probe`], plus the `--location`
//!   override parser; its error lists every probe it tried.
//! - [`fetch`]: probes and streaming downloads for `http://`, `ftp://`, `nfs://` and local
//!   directories, with errors that tell an unreachable host from a missing file or a timeout.
//! - [`seed`]: unattended-install media: cloud-init NoCloud ISOs and preseed/kickstart/AutoYaST
//!   files appended to an installer initrd as a newc cpio archive.
//!
//! A `vm install` flows: template → `Location` (URL, optional kernel/initrd override) → a
//! fetcher for the URL's scheme → `tree::detect` → `fetch_to_file` for kernel and initrd →
//! optionally `seed::append_to_initrd` → the agent boots the installer with the detected
//! arguments plus the template's `installer_args`.
//!
//! Everything here is blocking: call it from `tokio::task::spawn_blocking` in the agent.

pub mod fetch;
pub mod seed;
pub mod templates;
pub mod tree;
pub mod url;

pub use templates::{Catalog, Template, TemplateError};
pub use tree::{detect, DetectError, DetectOptions, Detected, Probe, ProbeResult};
pub use url::{Location, SourceUrl, UrlError};
