#![no_main]
//! The frames of a P2V upload (`PUT /v1/p2v/{id}/data`, `corral_p2v::wire`) on arbitrary
//! bytes, for a 64 MiB disk: the reader never panics, and every frame it accepts is whole
//! sectors inside the disk with exactly the data its header announced.
use corral_p2v::wire::{FrameKind, FrameReader, MAX_FRAME_BYTES, SECTOR};
use libfuzzer_sys::fuzz_target;

const DISK: u64 = 64 << 20;

fuzz_target!(|data: &[u8]| {
    let mut r = FrameReader::new(data, DISK);
    let mut frames = 0;
    while let Ok(Some(f)) = r.next_frame() {
        frames += 1;
        if f.kind == FrameKind::Data {
            let len = f.data.len() as u64;
            assert!(len > 0 && len <= u64::from(MAX_FRAME_BYTES) && len % SECTOR == 0);
            assert!(f.offset % SECTOR == 0 && f.offset + len <= DISK);
        } else {
            assert!(f.data.is_empty());
        }
        if frames > 10_000 {
            break;
        }
    }
});
