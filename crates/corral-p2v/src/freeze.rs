//! Freezing the source's file systems for the final pass: [`freeze`] issues FIFREEZE on
//! each mount point and returns a [`Frozen`] guard that thaws them (FITHAW) when dropped,
//! when [`Frozen::thaw`] is called, or — whatever the caller is doing — when a watchdog
//! thread sees the time limit pass. A server must never stay frozen because its converter
//! hung or crashed half-way.
//!
//! # While frozen, do not write to a frozen file system
//!
//! FIFREEZE blocks every writer of the file system until it is thawed — including the
//! process that froze it. A log line appended to a file on `/`, a temporary file, a
//! `fsync` of anything on `/var`: each of these blocks the caller until the watchdog thaws,
//! and the final pass is then not a consistent cut ([`Thawed::by_watchdog`]). Reading is
//! fine (reads of the disk are what the final pass does). Keep output to the terminal or
//! the network while frozen.
//!
//! Order: the deepest mount points are frozen first and thawed last, as qemu-guest-agent
//! does (reverse mount order), so a file system is never frozen while one mounted on it
//! still accepts writes that could need it. All mount points are opened before the first
//! freeze, so opening one never touches a frozen file system.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `_IOWR(dir, type, size)` as Linux's asm-generic ioctl.h computes it.
const fn iowr(kind: u8, nr: u8, size: u32) -> u32 {
    (3 << 30) | (size << 16) | ((kind as u32) << 8) | nr as u32
}

/// `_IOWR('X', 119, int)`.
pub const FIFREEZE: u32 = iowr(b'X', 119, 4);
/// `_IOWR('X', 120, int)`.
pub const FITHAW: u32 = iowr(b'X', 120, 4);

#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("cannot open mount point {}", mountpoint.display())]
    Open {
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the thaw watchdog")]
    Watchdog(#[source] io::Error),
    #[error("cannot freeze {}", mountpoint.display())]
    Freeze {
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The mount points in freezing order: deepest first (most path components), ties in
/// reverse lexical order so the order is deterministic; duplicates removed (freezing the
/// same file system twice is EBUSY).
pub fn freeze_order(mountpoints: &[PathBuf]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mountpoints.to_vec();
    v.sort_by(|a, b| {
        b.components()
            .count()
            .cmp(&a.components().count())
            .then_with(|| b.cmp(a))
    });
    v.dedup();
    v
}

fn ioctl(file: &File, request: u32) -> io::Result<()> {
    // SAFETY: FIFREEZE and FITHAW take an int argument the kernel ignores; the fd is open.
    // `as _`: the request parameter is c_ulong on glibc and c_int on musl.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, 0 as libc::c_int) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

struct State {
    /// Frozen file systems in freezing order; emptied by the one thaw that happens.
    frozen: Vec<(PathBuf, File)>,
    by_watchdog: bool,
    errors: Vec<String>,
}

/// Thaw in reverse freezing order. Idempotent: the first caller (guard or watchdog) thaws.
fn thaw_all(state: &Mutex<State>, by_watchdog: bool) {
    let mut s = match state.lock() {
        Ok(s) => s,
        // A panic elsewhere must not keep the server frozen.
        Err(poisoned) => poisoned.into_inner(),
    };
    if s.frozen.is_empty() {
        return;
    }
    s.by_watchdog |= by_watchdog;
    let frozen = std::mem::take(&mut s.frozen);
    for (mountpoint, file) in frozen.iter().rev() {
        if let Err(e) = ioctl(file, FITHAW) {
            s.errors
                .push(format!("cannot thaw {}: {e}", mountpoint.display()));
        }
    }
}

/// File systems frozen by [`freeze`]; thawed on drop at the latest.
pub struct Frozen {
    state: Arc<Mutex<State>>,
    since: Instant,
    stop: Option<mpsc::Sender<()>>,
    watchdog: Option<JoinHandle<()>>,
}

/// What [`Frozen::thaw`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thawed {
    /// How long the file systems were frozen (until this call or the watchdog, whichever
    /// came first — the watchdog case is measured up to this call).
    pub frozen_for: Duration,
    /// The watchdog thawed before the caller did: what was read after that is not a
    /// consistent cut, and the final pass must be redone.
    pub by_watchdog: bool,
    /// FITHAW failures (the file system stays frozen; an operator must run `fsfreeze -u`).
    pub errors: Vec<String>,
}

/// Freeze `mountpoints` (deepest first) for at most `max`. If one cannot be frozen, the
/// ones already frozen are thawed and the error names the mount point.
pub fn freeze(mountpoints: &[PathBuf], max: Duration) -> Result<Frozen, FreezeError> {
    let order = freeze_order(mountpoints);
    let mut opened = Vec::with_capacity(order.len());
    for mp in order {
        let file = open_dir(&mp).map_err(|source| FreezeError::Open {
            mountpoint: mp.clone(),
            source,
        })?;
        opened.push((mp, file));
    }
    let state = Arc::new(Mutex::new(State {
        frozen: Vec::new(),
        by_watchdog: false,
        errors: Vec::new(),
    }));
    let since = Instant::now();
    // The watchdog starts before the first freeze, so no path leaves a file system frozen
    // without a timer running.
    let (stop, stopped) = mpsc::channel::<()>();
    let watched = Arc::clone(&state);
    let watchdog = std::thread::Builder::new()
        .name("p2v-thaw-watchdog".into())
        .spawn(move || {
            // Disconnected (the guard went away) or told to stop: the guard thaws.
            if let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(max) {
                thaw_all(&watched, true);
            }
        })
        .map_err(FreezeError::Watchdog)?;
    let guard = Frozen {
        state,
        since,
        stop: Some(stop),
        watchdog: Some(watchdog),
    };
    // Flush while writers still run, so that each freeze's own flush (done with writers
    // blocked) has little left to write.
    for (_, file) in &opened {
        // SAFETY: syncfs only takes the open fd.
        unsafe { libc::syncfs(file.as_raw_fd()) };
    }
    for (mp, file) in opened {
        // Under the lock, so the watchdog cannot thaw between a freeze and its record.
        let mut s = match guard.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        let result = if s.by_watchdog {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the freeze limit passed while freezing",
            ))
        } else {
            ioctl(&file, FIFREEZE)
        };
        match result {
            Ok(()) => s.frozen.push((mp, file)),
            Err(source) => {
                drop(s);
                // Dropping the guard thaws the ones frozen so far.
                drop(guard);
                return Err(FreezeError::Freeze {
                    mountpoint: mp,
                    source,
                });
            }
        }
    }
    Ok(guard)
}

/// O_RDONLY|O_DIRECTORY, and O_NOATIME where the kernel lets us (only the owner or root
/// may; the directory's atime is not worth a failure).
fn open_dir(path: &Path) -> io::Result<File> {
    let open = |extra: libc::c_int| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC | extra)
            .open(path)
    };
    open(libc::O_NOATIME).or_else(|_| open(0))
}

impl Frozen {
    /// Whether the watchdog has already thawed (the cut is no longer consistent).
    pub fn expired(&self) -> bool {
        match self.state.lock() {
            Ok(s) => s.by_watchdog,
            Err(p) => p.into_inner().by_watchdog,
        }
    }

    /// Thaw now and report.
    pub fn thaw(mut self) -> Thawed {
        self.finish();
        let s = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        Thawed {
            frozen_for: self.since.elapsed(),
            by_watchdog: s.by_watchdog,
            errors: s.errors.clone(),
        }
    }

    fn finish(&mut self) {
        thaw_all(&self.state, false);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux() {
        assert_eq!(FIFREEZE, 0xC004_5877);
        assert_eq!(FITHAW, 0xC004_5878);
    }

    #[test]
    fn deepest_first_without_duplicates() {
        let p = |s: &str| PathBuf::from(s);
        let order = freeze_order(&[
            p("/"),
            p("/var"),
            p("/var/lib/docker"),
            p("/boot"),
            p("/var"),
            p("/srv/a"),
        ]);
        assert_eq!(
            order,
            vec![
                p("/var/lib/docker"),
                p("/srv/a"),
                p("/var"),
                p("/boot"),
                p("/")
            ]
        );
    }

    #[test]
    fn a_missing_mount_point_is_an_open_error_naming_it() {
        let r = freeze(&[PathBuf::from("/nonexistent/p2v")], Duration::from_secs(1));
        match r {
            Err(FreezeError::Open { mountpoint, .. }) => {
                assert_eq!(mountpoint, PathBuf::from("/nonexistent/p2v"))
            }
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => panic!("froze a missing directory"),
        }
    }

    #[test]
    fn nothing_to_freeze_thaws_cleanly_and_the_watchdog_stops() {
        let f = freeze(&[], Duration::from_secs(60)).unwrap();
        assert!(!f.expired());
        let t = f.thaw();
        assert!(!t.by_watchdog);
        assert!(t.errors.is_empty());
        assert!(t.frozen_for < Duration::from_secs(60));
    }
}
