//! P2V (issue 12), the source side and its wire format.
//!
//! `corral p2v` runs on the server being converted. It finds the disk the root file system
//! lives on ([`scan::discover`]) — or takes the disk it is given, mounted or not
//! ([`scan::discover_disk`]: a server booted from our P2V media, the benchmark's loop
//! device) — works out which byte ranges of it hold data (file systems it
//! understands are read through their allocation bitmaps, so free blocks never cross the
//! wire), sends those ranges to an agent as checksummed, compressed [`wire`] frames while
//! the server runs, then freezes the server's file systems for a short final pass that
//! sends only what changed ([`freeze`]). The agent writes the frames into the new VM's
//! volume and converts it like an imported disk image.
//!
//! The modules, in the order a conversion uses them:
//! - [`scan`]: what the source is — the system disk, the file systems and swap areas on it
//!   mapped onto disk byte ranges (partitions, linear device-mapper/LVM), the OS, firmware
//!   and boot loader — and the refusals and warnings to show before anything is sent.
//!   Pure over [`scan::Facts`] (and, for a named disk, probes of its devices' first
//!   bytes); [`scan::read_facts`] and the probe reads are the only parts touching the system.
//! - [`probe`]: what an unmounted partition holds (ext, swap, LVM, xfs, btrfs...) and how
//!   the disk boots (GPT EFI System partition, GRUB in the MBR), from their first bytes.
//! - [`ext4`]: the allocated blocks of an ext2/3/4 file system, from its block bitmaps.
//! - [`ranges`]: the whole-disk list of byte ranges to send (used blocks of the file
//!   systems it understands, everything it does not understand whole).
//! - [`disk`]: the read-only, page-cache-bypassing reader of the system disk.
//! - [`freeze`]: FIFREEZE/FITHAW as a guard with a watchdog, for the final pass.
//! - [`unchanged`]: extents of files untouched since a time (FIEMAP), which the final pass
//!   need not re-read.
//! - [`pass`]: one pass over the disk: the windows read, the pieces sent (all non-zero ones
//!   first, then only those that changed), and where an interrupted upload resumes.
//! - [`wire`]: the frames that carry the ranges to the agent.

pub mod disk;
pub mod ext4;
pub mod freeze;
pub mod pass;
pub mod probe;
pub mod ranges;
pub mod scan;
pub mod unchanged;
pub mod wire;
