//! Progress reports. Totals are exact and known before the first byte moves (they come from the
//! extent maps), so a caller can show rate and ETA from the first callback on.

/// What an export or import is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Mapping allocated ranges, or converting a disk with `qemu-img` before copying it.
    Preparing,
    /// Copying disk data into the archive (export).
    Exporting,
    /// Copying disk data out of the archive (import).
    Importing,
    /// Converting imported raw data into the target volume format.
    Finishing,
}

/// One progress report. `bytes_done` only grows and ends equal to `bytes_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub phase: Phase,
    /// Device being worked on (`disk0`), when the phase is about one disk.
    pub device: Option<String>,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// A callback that ignores progress, for callers that do not show any.
pub fn no_progress(_: Progress) {}
