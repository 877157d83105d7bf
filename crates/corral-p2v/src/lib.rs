//! P2V (issue 12), the source side and its wire format.
//!
//! `corral p2v` runs on the server being converted. It finds the disk the root file system
//! lives on ([`scan`]), works out which byte ranges of it hold data (file systems it
//! understands are read through their allocation bitmaps, so free blocks never cross the
//! wire), sends those ranges to an agent as checksummed, compressed [`wire`] frames while
//! the server runs, then freezes the server's file systems for a short final pass that
//! sends only what changed ([`freeze`]). The agent writes the frames into the new VM's
//! volume and converts it like an imported disk image.

pub mod pass;
pub mod wire;
