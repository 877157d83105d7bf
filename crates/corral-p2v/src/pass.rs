//! One pass over the source disk: which bytes to read, which of them to send, and where an
//! interrupted upload resumes.
//!
//! A pass walks the disk's ranges (what [`crate::ranges`] says holds data) in windows of at
//! most [`WINDOW`] bytes, aligned to [`PIECE`] boundaries. Each window is read once; its
//! pieces (the parts of the window inside one 64 KiB-aligned block) are hashed and compared
//! with what the session already sent: the first pass sends every piece that is not all
//! zeros (the new volume reads zeros wherever nothing was written), the final pass every
//! piece whose content is not what was sent (or, never sent, is not zeros). Runs of
//! consecutive pieces to send become one frame. The pass remembers the window each frame
//! came from, so an upload that breaks resumes at the window of the first frame the agent
//! did not apply; re-sending a window the agent partly has is harmless (writes are
//! idempotent).

use std::collections::HashMap;

/// Bytes compared and remembered as one unit.
pub const PIECE: u64 = 64 << 10;
/// Bytes read at once (and the largest frame).
pub const WINDOW: u64 = 1 << 20;

/// What was sent of a piece: its length and the hash of its bytes (zero pieces are
/// remembered too: the volume has zeros there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    len: u32,
    hash: u64,
}

/// What the session has sent so far, across passes.
#[derive(Debug, Default)]
pub struct Ledger {
    pieces: HashMap<u64, Sent>,
}

/// A window of the disk: read whole, then split into pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub offset: u64,
    pub len: u64,
}

/// The windows covering `ranges` (sorted, non-overlapping disk byte ranges, whole sectors),
/// each inside one [`WINDOW`]-aligned span so pieces never straddle a window.
pub fn windows(ranges: &[(u64, u64)]) -> Vec<Window> {
    let mut out = Vec::new();
    for &(start, len) in ranges {
        let end = start + len;
        let mut at = start;
        while at < end {
            let stop = end.min((at / WINDOW + 1) * WINDOW);
            out.push(Window {
                offset: at,
                len: stop - at,
            });
            at = stop;
        }
    }
    out
}

/// Which pass this is: the first sends everything that is not zeros, later ones what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    First,
    Final,
}

/// One frame's worth of a window: `data[at..at+len]` is to be sent at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub offset: u64,
    pub at: usize,
    pub len: usize,
}

impl Ledger {
    /// The runs of `data` (window `w`, just read) to send in a pass of `kind`, and the
    /// ledger updated as if they were sent.
    pub fn runs(&mut self, kind: PassKind, w: Window, data: &[u8]) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        let mut at = w.offset;
        let end = w.offset + w.len;
        while at < end {
            let stop = end.min((at / PIECE + 1) * PIECE);
            let i = (at - w.offset) as usize;
            let bytes = &data[i..i + (stop - at) as usize];
            let now = Sent {
                len: bytes.len() as u32,
                hash: xxhash_rust::xxh3::xxh3_64(bytes),
            };
            let zero = bytes.iter().all(|&b| b == 0);
            let send = match (kind, self.pieces.get(&at)) {
                (PassKind::First, _) => !zero,
                (PassKind::Final, Some(before)) => *before != now,
                (PassKind::Final, None) => !zero,
            };
            self.pieces.insert(at, now);
            if send {
                match runs.last_mut() {
                    Some(r) if r.offset + r.len as u64 == at => r.len += bytes.len(),
                    _ => runs.push(Run {
                        offset: at,
                        at: i,
                        len: bytes.len(),
                    }),
                }
            }
            at = stop;
        }
        runs
    }
}

/// Where each frame of a pass came from, to resume an interrupted upload.
#[derive(Debug, Default)]
pub struct Progress {
    /// The window index of frame `seq` is `frame_windows[seq - 1]`.
    frame_windows: Vec<usize>,
}

impl Progress {
    /// Record the next frame, from window `window`; its sequence number.
    pub fn frame(&mut self, window: usize) -> u64 {
        self.frame_windows.push(window);
        self.frame_windows.len() as u64
    }

    /// The agent applied frames up to `applied`: the window to start again from and the
    /// next sequence number. Frames produced after `applied` are forgotten.
    pub fn resume(&mut self, applied: u64) -> (usize, u64) {
        let applied = (applied as usize).min(self.frame_windows.len());
        let window = match (self.frame_windows.get(applied), applied) {
            // The first frame not applied: its whole window again.
            (Some(&w), _) => w,
            (None, 0) => 0,
            // Every frame made was applied: after the last one's window.
            (None, n) => self.frame_windows[n - 1] + 1,
        };
        self.frame_windows.truncate(applied);
        (window, applied as u64 + 1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn windows_split_at_window_boundaries() {
        let w = windows(&[
            (512, 1024),
            (WINDOW - 4096, 8192),
            (3 * WINDOW, 2 * WINDOW + 512),
        ]);
        let got: Vec<(u64, u64)> = w.iter().map(|w| (w.offset, w.len)).collect();
        assert_eq!(
            got,
            vec![
                (512, 1024),
                (WINDOW - 4096, 4096),
                (WINDOW, 4096),
                (3 * WINDOW, WINDOW),
                (4 * WINDOW, WINDOW),
                (5 * WINDOW, 512)
            ]
        );
    }

    #[test]
    fn the_first_pass_skips_zeros_and_the_final_pass_sends_only_changes() {
        let w = Window {
            offset: 0,
            len: 4 * PIECE,
        };
        let mut data = vec![0u8; (4 * PIECE) as usize];
        data[10] = 1; // piece 0
        data[(2 * PIECE) as usize + 5] = 2; // piece 2
        data[(3 * PIECE) as usize] = 3; // piece 3
        let mut l = Ledger::default();
        let first = l.runs(PassKind::First, w, &data);
        assert_eq!(
            first,
            vec![
                Run {
                    offset: 0,
                    at: 0,
                    len: PIECE as usize
                },
                Run {
                    offset: 2 * PIECE,
                    at: 2 * PIECE as usize,
                    len: 2 * PIECE as usize
                },
            ]
        );
        // Nothing changed: nothing to send.
        assert!(l.runs(PassKind::Final, w, &data).is_empty());
        // Piece 1 got data, piece 3 became zeros: both go (the volume has the old bytes of 3).
        data[PIECE as usize] = 9;
        data[(3 * PIECE) as usize] = 0;
        let fin = l.runs(PassKind::Final, w, &data);
        assert_eq!(
            fin,
            vec![
                Run {
                    offset: PIECE,
                    at: PIECE as usize,
                    len: PIECE as usize
                },
                Run {
                    offset: 3 * PIECE,
                    at: 3 * PIECE as usize,
                    len: PIECE as usize
                },
            ]
        );
        // A piece never seen before that is zeros is not sent in the final pass either.
        let later = Window {
            offset: 8 * PIECE,
            len: PIECE,
        };
        assert!(l
            .runs(PassKind::Final, later, &vec![0u8; PIECE as usize])
            .is_empty());
    }

    #[test]
    fn an_interrupted_upload_resumes_at_the_first_frame_not_applied() {
        let mut p = Progress::default();
        // Windows 0 and 1 made one frame each, window 2 two, window 4 one (3 was zeros).
        for w in [0, 1, 2, 2, 4] {
            p.frame(w);
        }
        assert_eq!(
            p.resume(3),
            (2, 4),
            "frame 4 is window 2's second: window 2 again"
        );
        // After the resume, frames are numbered from 4 again.
        assert_eq!(p.frame(2), 4);
        let mut q = Progress::default();
        assert_eq!(q.resume(0), (0, 1));
        q.frame(0);
        q.frame(3);
        assert_eq!(q.resume(2), (4, 3), "all applied: after window 3");
        assert_eq!(
            q.resume(9),
            (4, 3),
            "the agent cannot have more than was made"
        );
    }
}
