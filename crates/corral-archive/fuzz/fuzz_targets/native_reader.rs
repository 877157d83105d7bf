#![no_main]
//! The native archive reader on arbitrary bytes: any input must end in Ok or a clean error,
//! never a panic, a write outside a disk, or unbounded memory.
use corral_archive::{no_progress, read_archive, Limits};
use corral_archive_fuzz::NullSink;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        threads: 1,
        ..Limits::default()
    };
    let _ = read_archive(data, &mut NullSink::default(), &limits, &no_progress);
});
