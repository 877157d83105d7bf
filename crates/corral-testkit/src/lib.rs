//! Test support for corral's crates; only ever a dev-dependency.
//!
//! [`fake_qemu`] is a QEMU stand-in that speaks enough QMP over a unix socket for the agent's
//! VM actor to run against it without a guest: it greets, answers the commands the actor
//! sends, keeps a run status, emits the events a real QEMU emits (`STOP`, `RESUME`,
//! `SHUTDOWN`), and "exits" by closing its socket — on `quit`, on an honoured ACPI power
//! button, or when a test kills it.

pub mod fake_qemu;
