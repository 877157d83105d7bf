//! The frames `corral p2v` sends to an agent (`PUT /v1/p2v/{id}/data`): each carries one
//! range of the source disk, compressed with zstd when that helps, with the xxh3 hash of the
//! raw bytes so the agent can refuse a corrupted frame, and a sequence number so an upload
//! cut off mid-pass resumes after the last frame the agent applied. A pass ends with an
//! [`FrameKind::End`] frame; without it the agent treats the pass as interrupted.
//!
//! Layout, little-endian, [`HEADER_BYTES`] then `stored` bytes of payload:
//! `magic "CPVF" | kind u8 | compression u8 | 0u16 | seq u64 | offset u64 | len u32 |
//! stored u32 | xxh3 u64`. `offset` and `len` are multiples of [`SECTOR`]; `len` is at most
//! [`MAX_FRAME_BYTES`].

use std::io::{self, Read};

pub const MAGIC: [u8; 4] = *b"CPVF";
pub const HEADER_BYTES: usize = 40;
/// Offsets and lengths are whole sectors.
pub const SECTOR: u64 = 512;
/// The largest range one frame carries (the agent buffers one frame at a time).
pub const MAX_FRAME_BYTES: u32 = 4 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    Data = 1,
    /// The pass is complete: every range it meant to send was sent.
    End = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame {seq}: {what}")]
    Invalid { seq: u64, what: String },
    #[error("the stream is not P2V frames (bad magic)")]
    BadMagic,
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One decoded, verified frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub seq: u64,
    pub offset: u64,
    /// The raw bytes (empty for [`FrameKind::End`]).
    pub data: Vec<u8>,
    /// Bytes this frame took on the wire, header included.
    pub wire_bytes: u64,
}

/// Encode a data frame; compressed (zstd `level`; `None`: never) only when that is smaller.
pub fn encode_data(seq: u64, offset: u64, data: &[u8], level: Option<i32>) -> Vec<u8> {
    debug_assert!(offset.is_multiple_of(SECTOR) && (data.len() as u64).is_multiple_of(SECTOR));
    debug_assert!(data.len() <= MAX_FRAME_BYTES as usize);
    let hash = xxhash_rust::xxh3::xxh3_64(data);
    let compressed = level
        .and_then(|l| zstd::bulk::compress(data, l).ok())
        .filter(|c| c.len() < data.len());
    let (comp, payload) = match &compressed {
        Some(c) => (Compression::Zstd, c.as_slice()),
        None => (Compression::None, data),
    };
    let mut out = header(
        FrameKind::Data,
        comp,
        seq,
        offset,
        data.len() as u32,
        payload.len() as u32,
        hash,
    );
    out.extend_from_slice(payload);
    out
}

/// Renumber an encoded frame (frames are compressed in parallel and numbered in the order
/// they are sent).
pub fn set_seq(frame: &mut [u8], seq: u64) {
    frame[8..16].copy_from_slice(&seq.to_le_bytes());
}

/// The frame that closes a pass.
pub fn encode_end(seq: u64) -> Vec<u8> {
    header(FrameKind::End, Compression::None, seq, 0, 0, 0, 0)
}

fn header(
    kind: FrameKind,
    comp: Compression,
    seq: u64,
    offset: u64,
    len: u32,
    stored: u32,
    hash: u64,
) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_BYTES + stored as usize);
    h.extend_from_slice(&MAGIC);
    h.push(kind as u8);
    h.push(comp as u8);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&seq.to_le_bytes());
    h.extend_from_slice(&offset.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&stored.to_le_bytes());
    h.extend_from_slice(&hash.to_le_bytes());
    h
}

/// Reads and verifies frames for a disk of `disk_bytes`.
pub struct FrameReader<R> {
    input: R,
    disk_bytes: u64,
}

impl<R: Read> FrameReader<R> {
    pub fn new(input: R, disk_bytes: u64) -> Self {
        FrameReader { input, disk_bytes }
    }

    /// The next frame, `None` at a clean end of the stream (between frames).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        let mut h = [0u8; HEADER_BYTES];
        match read_full(&mut self.input, &mut h)? {
            0 => return Ok(None),
            n if n < HEADER_BYTES => return Err(WireError::Truncated),
            _ => {}
        }
        if h[0..4] != MAGIC {
            return Err(WireError::BadMagic);
        }
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let seq = u64_at(8);
        let (offset, len, stored, hash) = (u64_at(16), u32_at(24), u32_at(28), u64_at(32));
        let bad = |what: String| WireError::Invalid { seq, what };
        let kind = match h[4] {
            1 => FrameKind::Data,
            2 => FrameKind::End,
            k => return Err(bad(format!("unknown frame kind {k}"))),
        };
        let comp = match h[5] {
            0 => Compression::None,
            1 => Compression::Zstd,
            c => return Err(bad(format!("unknown compression {c}"))),
        };
        if kind == FrameKind::End {
            if len != 0 || stored != 0 {
                return Err(bad("an end frame carries no data".into()));
            }
            return Ok(Some(Frame {
                kind,
                seq,
                offset: 0,
                data: Vec::new(),
                wire_bytes: HEADER_BYTES as u64,
            }));
        }
        if len == 0 || len > MAX_FRAME_BYTES || !u64::from(len).is_multiple_of(SECTOR) {
            return Err(bad(format!(
                "length {len} is not 1..={MAX_FRAME_BYTES} whole sectors"
            )));
        }
        if !offset.is_multiple_of(SECTOR)
            || offset
                .checked_add(u64::from(len))
                .is_none_or(|e| e > self.disk_bytes)
        {
            return Err(bad(format!(
                "range {offset}+{len} is not whole sectors inside the {}-byte disk",
                self.disk_bytes
            )));
        }
        let too_big = match comp {
            Compression::None => stored != len,
            Compression::Zstd => stored >= len,
        };
        if too_big {
            return Err(bad(format!("{stored} stored bytes for {len} raw bytes")));
        }
        let mut payload = vec![0u8; stored as usize];
        if read_full(&mut self.input, &mut payload)? < payload.len() {
            return Err(WireError::Truncated);
        }
        let data = match comp {
            Compression::None => payload,
            Compression::Zstd => {
                let d = zstd::bulk::decompress(&payload, len as usize)
                    .map_err(|e| bad(format!("cannot decompress: {e}")))?;
                if d.len() != len as usize {
                    return Err(bad(format!("decompressed to {} bytes, not {len}", d.len())));
                }
                d
            }
        };
        if xxhash_rust::xxh3::xxh3_64(&data) != hash {
            return Err(bad(
                "checksum mismatch: the data was damaged on the way".into()
            ));
        }
        Ok(Some(Frame {
            kind,
            seq,
            offset,
            data,
            wire_bytes: (HEADER_BYTES + stored as usize) as u64,
        }))
    }
}

/// Fill `buf` unless the input ends first; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read_all(bytes: &[u8], disk: u64) -> Result<Vec<Frame>, WireError> {
        let mut r = FrameReader::new(bytes, disk);
        let mut out = Vec::new();
        while let Some(f) = r.next_frame()? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn frames_round_trip_compressed_or_not() {
        let zeros = vec![0u8; 64 << 10];
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut s = encode_data(1, 0, &zeros, Some(1));
        assert!(s.len() < 1000, "zeros compress");
        s.extend(encode_data(2, 1 << 20, &noise, Some(1)));
        s.extend(encode_end(3));
        let f = read_all(&s, 2 << 20).unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!((f[0].seq, f[0].offset, f[0].data.len()), (1, 0, 64 << 10));
        assert_eq!(f[1].data, noise);
        assert_eq!(f[2].kind, FrameKind::End);
        assert_eq!(f.iter().map(|f| f.wire_bytes).sum::<u64>(), s.len() as u64);
    }

    #[test]
    fn bad_frames_are_refused_with_the_reason() {
        // Incompressible, so the payload is stored raw and a flipped byte reaches the checksum.
        let noise: Vec<u8> = (0..512u64)
            .map(|i| (xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()) >> 7) as u8)
            .collect();
        let good = encode_data(7, 4096, &noise, Some(1));
        assert_eq!(good[5], Compression::None as u8);
        let cases: Vec<(Vec<u8>, u64, &str)> = vec![
            (good.clone(), 4096, "inside the 4096-byte disk"),
            (
                good[..good.len() - 1].to_vec(),
                1 << 20,
                "ended inside a frame",
            ),
            (
                {
                    let mut b = good.clone();
                    b[0] = b'X';
                    b
                },
                1 << 20,
                "bad magic",
            ),
            (
                {
                    let mut b = good.clone();
                    b[4] = 9;
                    b
                },
                1 << 20,
                "unknown frame kind",
            ),
            (
                {
                    let mut b = good.clone();
                    b[16] = 1;
                    b
                },
                1 << 20,
                "whole sectors",
            ),
            (
                {
                    let mut b = good.clone();
                    let n = b.len();
                    b[n - 1] ^= 0xff;
                    b
                },
                1 << 20,
                "checksum mismatch",
            ),
            (
                {
                    let mut b = good.clone();
                    b[24..28].copy_from_slice(&(8u32 << 20).to_le_bytes());
                    b
                },
                1 << 30,
                "whole sectors",
            ),
        ];
        for (bytes, disk, want) in cases {
            let e = read_all(&bytes, disk).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }
}
