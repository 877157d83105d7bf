//! Test support for corral's crates; only ever a dev-dependency. One home for what tests of
//! several crates need, so copies cannot drift apart: the test guest's location
//! ([`guest`]), ports ([`net`]), VM spec fixtures ([`spec`]) and a fake QEMU ([`fake_qemu`]).
//!
//! [`fake_qemu`] is a QEMU stand-in that speaks enough QMP over a unix socket for the agent's
//! VM actor to run against it without a guest: it greets, answers the commands the actor
//! sends, keeps a run status, emits the events a real QEMU emits (`STOP`, `RESUME`,
//! `SHUTDOWN`), and "exits" by closing its socket — on `quit`, on an honoured ACPI power
//! button, or when a test kills it.

pub mod fake_qemu;
pub mod guest;
pub mod net;
pub mod spec;

pub use guest::{test_guest, TestGuest, MARKER};
pub use net::{closed_port, free_port};
pub use spec::vm_spec;
