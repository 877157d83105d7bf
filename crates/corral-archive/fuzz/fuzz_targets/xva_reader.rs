#![no_main]
//! The XVA reader (compression detection, ova.xml, blocks and checksums) on arbitrary bytes.
use corral_archive::xva::read_xva;
use corral_archive::{no_progress, Limits};
use corral_archive_fuzz::NullSink;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = read_xva(
        data,
        &mut NullSink::default(),
        &Limits::default(),
        &no_progress,
    );
});
