//! Storage on one host: repositories (directories holding volumes), volumes made and inspected
//! with `qemu-img`, and the ISO library.
//!
//! The agent decides which repository a disk goes to and the volume's file name
//! (`<vm-uuid>-<device>.<format>`, unique across hosts); this crate does the file work and
//! turns `qemu-img` failures into errors that say which volume and why. Paths handed to
//! `qemu-img` are always absolute, so a ':' in a name can never be read as a protocol prefix.

pub mod iso;
pub mod qemu_img;
pub mod volume;

pub use iso::{check_iso, list_isos};
pub use volume::{
    create_volume, fs_space, import_volume, remove_volume, volume_file_name, volume_info,
    VolumeError, VolumeInfo,
};
pub mod overlay;
pub use overlay::{backing_chain, backing_file, create_overlay};
