//! Helpers shared by the fetcher integration tests: real servers on 127.0.0.1 serving a copy
//! of the fixture trees, killed when the guard drops.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// corral-install's directory, also when another crate's tests include this module.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crates/")
        .join("corral-install")
}

pub fn fixture(name: &str) -> PathBuf {
    crate_dir().join("tests/fixtures/trees").join(name)
}

/// Copy fixture trees into one temporary directory (`<tmp>/<fixture>/...`), and give the
/// `big` file of each a size large enough to exercise streaming.
pub fn served_trees(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for n in names {
        copy_dir(&fixture(n), &dir.path().join(n));
    }
    dir
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read fixture") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).expect("copy");
        }
    }
}

/// Deterministic content of `len` bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// A child process killed (SIGTERM, then waited for) on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM lets wrapper scripts run their cleanup traps.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn python() -> &'static str {
    // Debian's interpreter has the python3-pyftpdlib module; a pyenv shim may not.
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Read stdout lines until `pred` returns Some.
fn wait_line<T>(child: &mut Child, what: &str, pred: impl Fn(&str) -> Option<T>) -> T {
    let out = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(v) = pred(&l) {
                    // Keep draining so the server never blocks on a full pipe.
                    std::thread::spawn(move || for _ in lines {});
                    return v;
                }
            }
            _ => panic!("{what} exited before it was ready"),
        }
    }
}

/// `python3 -m http.server` on 127.0.0.1 with a free port.
pub fn http_server(root: &Path) -> Server {
    http_server_to(root, Stdio::null())
}

/// [`http_server`] whose access log (one line per request) goes to `log`.
pub fn http_server_logged(root: &Path, log: &Path) -> Server {
    http_server_to(root, log_file(log))
}

fn log_file(log: &Path) -> Stdio {
    Stdio::from(std::fs::File::create(log).expect("create the server log"))
}

/// [`http_server_logged`] listening on `address` instead of 127.0.0.1 (e.g. a bridge's
/// address, for guests on that bridge).
pub fn http_server_on(root: &Path, address: &str, log: &Path) -> Server {
    http_server_at(root, address, log_file(log))
}

fn http_server_to(root: &Path, stderr: Stdio) -> Server {
    http_server_at(root, "127.0.0.1", stderr)
}

fn http_server_at(root: &Path, address: &str, stderr: Stdio) -> Server {
    let mut child = Command::new(python())
        .args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            address,
            "--directory",
        ])
        .arg(root)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start python3 -m http.server");
    let port = wait_line(&mut child, "http.server", |l| {
        l.split(" port ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    Server { child, port }
}

/// `tests/servers/ftp_server.py` (pyftpdlib) on 127.0.0.1 with a free port.
pub fn ftp_server(root: &Path) -> Server {
    ftp_server_to(root, None)
}

/// [`ftp_server`] logging every transfer (`RETR /path completed=1 ...`) to `log`.
pub fn ftp_server_logged(root: &Path, log: &Path) -> Server {
    ftp_server_to(root, Some(log))
}

fn ftp_server_to(root: &Path, log: Option<&Path>) -> Server {
    let mut cmd = Command::new(python());
    if log.is_some() {
        cmd.env("FTP_SERVER_LOG", "INFO");
    }
    let mut child = cmd
        .arg(crate_dir().join("tests/servers/ftp_server.py"))
        .arg(root)
        .stdout(Stdio::piped())
        .stderr(log.map_or_else(Stdio::null, log_file))
        .spawn()
        .expect("start ftp_server.py");
    let port = wait_line(&mut child, "ftp_server.py", |l| {
        l.strip_prefix("PORT ")?.trim().parse().ok()
    });
    Server { child, port }
}

/// `tests/servers/nfs_server.sh` (nfs-ganesha) exporting `root`.
pub fn nfs_server(root: &Path, work: &Path) -> Server {
    let mut child = Command::new("sh")
        .arg(crate_dir().join("tests/servers/nfs_server.sh"))
        .arg(root)
        .arg(work)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start nfs_server.sh");
    wait_line(&mut child, "nfs_server.sh", |l| {
        (l == "READY").then_some(())
    });
    Server { child, port: 2049 }
}

/// A port on 127.0.0.1 where nothing listens.
#[allow(unused_imports)] // not every test binary uses every helper
pub use corral_testkit::closed_port;

/// A server that accepts connections and never answers.
pub fn silent_server() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    (l, port)
}
