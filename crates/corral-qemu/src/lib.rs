//! Everything corral knows about QEMU, behind narrow interfaces the agent calls.
//!
//! - [`argv`]: the command line as a pure function of a VM spec (golden-tested), and the ids
//!   every QEMU object gets so the agent can address it over QMP.
//! - [`qmp`]: an async QMP client: one connection, many concurrent callers correlated by id,
//!   events broadcast to subscribers, a clear error when QEMU goes away.
//! - [`process`]: starting QEMU confined in its own session (so it outlives the agent), pid
//!   files, recognising a VM's QEMU after an agent restart, the QEMU version.
//! - [`confine`]: the identity and seccomp sandbox of a confined QEMU, and the privilege drop
//!   before `exec`.
//! - [`probe`]: choosing KVM or TCG by really booting a tiny guest under KVM.
//! - [`firmware`]: finding the OVMF files UEFI guests need.
//!
//! A VM start flows: agent -> `argv::build_argv` -> `process::spawn_confined` (which
//! connects `qmp::Qmp` on the socket named in the argv) -> `cont`.

pub mod argv;
pub mod confine;
pub mod firmware;
pub mod migration;
pub mod probe;
pub mod process;
pub mod qmp;

pub use argv::{build_argv, ArgvError, Launch, NicBackend, OvmfPaths, RuntimePaths};
pub use probe::{probe_accelerator, ProbeError};
pub use process::ProcessError;
pub use qmp::{Qmp, QmpError, QmpEvent};
