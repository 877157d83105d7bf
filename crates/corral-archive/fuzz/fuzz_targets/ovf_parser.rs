#![no_main]
//! The OVF descriptor parser on arbitrary text, and the OVA reader up to the point where it
//! would need disk files (the null sink has no scratch directory).
use corral_archive::ova::{parse_ovf, read_ova};
use corral_archive::{no_progress, Limits};
use corral_archive_fuzz::NullSink;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_ovf(text);
    }
    let _ = read_ova(
        data,
        &mut NullSink::default(),
        &Limits::default(),
        &no_progress,
    );
});
