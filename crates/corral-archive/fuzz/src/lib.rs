//! Shared pieces of the fuzz targets: a sink that checks the reader's promises (writes inside
//! the disk, after `create_disk`) and keeps nothing.

use corral_archive::{DiskTarget, ImportSink, Progress};
use corral_model::DiskFormat;
use std::io;
use std::path::PathBuf;

/// Discards data; panics if a reader breaks the `ImportSink` contract.
#[derive(Default)]
pub struct NullSink {
    sizes: Vec<u64>,
}

impl ImportSink for NullSink {
    fn create_disk(&mut self, t: &DiskTarget) -> io::Result<()> {
        assert_eq!(t.index, self.sizes.len());
        self.sizes.push(t.virtual_size);
        Ok(())
    }
    fn write_at(&self, disk: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        let size = self.sizes[disk];
        assert!(
            offset + data.len() as u64 <= size,
            "write past the end of disk {disk}"
        );
        Ok(())
    }
    fn finish_disk(&mut self, _: usize, _: &dyn Fn(Progress)) -> io::Result<(PathBuf, DiskFormat)> {
        Ok((PathBuf::new(), DiskFormat::Raw))
    }
    /// Carried files (format 2.0): read to the end and discarded, so the reader's size and
    /// hash checks run on fuzzed data.
    fn write_file(&self, _: corral_archive::FileRole, data: &mut dyn io::Read) -> io::Result<PathBuf> {
        io::copy(data, &mut io::sink())?;
        Ok(PathBuf::new())
    }
}
