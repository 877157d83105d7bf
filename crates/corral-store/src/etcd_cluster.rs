//! Test support: a throwaway etcd cluster (Debian `etcd-server`) on loopback ports, with
//! temporary data dirs and short raft timings (heartbeat 50 ms, election 250 ms). Members
//! can be killed and restarted; everything is killed on drop, and — because the processes
//! are spawned from one long-lived thread with `PR_SET_PDEATHSIG` — when the test process
//! exits, even for a cluster kept in a `static`.
//!
//! Shared by the unit tests (`conformance`) and `tests/etcd.rs` (included by path).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct EtcdCluster {
    members: Vec<Member>,
    /// Another address the members also serve clients on (a test network namespace's
    /// host side), besides loopback.
    extra_client_ip: Option<String>,
    _dir: tempfile::TempDir,
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    data: PathBuf,
    child: Option<Child>,
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Children die with the thread that spawned them (PDEATHSIG): spawn them all from one thread
/// that lives as long as the process.
fn spawner() -> &'static std::sync::Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<std::sync::Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("etcd-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // Keep the thread (and so the children) alive until the process exits.
                loop {
                    std::thread::park();
                }
            })
            .unwrap();
        std::sync::Mutex::new(tx)
    })
}

fn spawn(mut cmd: Command) -> Child {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner().lock().unwrap().send((cmd, tx)).unwrap();
    rx.recv().unwrap().expect("start etcd (Debian etcd-server)")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl EtcdCluster {
    /// Start `n` members and wait (at most 30 s) until every one reports healthy.
    pub fn start(n: usize) -> Self {
        Self::start_also_on(n, None)
    }

    /// Like [`start`](Self::start), the members also serving clients on `ip` (which must
    /// exist on this host), for agents in a network namespace.
    pub fn start_also_on(n: usize, extra_client_ip: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 2 * n {
            let p = free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
                data: dir.path().join(format!("m{i}")),
                child: None,
            })
            .collect();
        let mut c = EtcdCluster {
            members,
            extra_client_ip: extra_client_ip.map(str::to_string),
            _dir: dir,
        };
        for i in 0..n {
            c.launch(i, "new");
        }
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn launch(&mut self, i: usize, state: &str) {
        let initial = self.initial_cluster();
        let extra = self.extra_client_ip.clone();
        let m = &mut self.members[i];
        let mut listen = format!("http://127.0.0.1:{}", m.client);
        if let Some(ip) = &extra {
            listen.push_str(&format!(",http://{ip}:{}", m.client));
        }
        std::fs::create_dir_all(&m.data).unwrap();
        let log = std::fs::File::create(m.data.with_extension("log")).unwrap();
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data)
            .arg("--listen-client-urls")
            .arg(listen)
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{}", m.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", m.peer))
            .arg("--initial-cluster")
            .arg(initial)
            .arg("--initial-cluster-state")
            .arg(state)
            .arg("--initial-cluster-token")
            .arg("corral-test")
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("250")
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        m.child = Some(spawn(cmd));
    }

    /// `http://127.0.0.1:PORT` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// The client URLs on another address the members serve (see `start_also_on`).
    pub fn endpoints_at(&self, ip: &str) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{ip}:{}", m.client))
            .collect()
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client)
    }

    /// SIGKILL one member.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP one member: its sockets stay open but nothing answers (a frozen host).
    pub fn freeze(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
    }

    /// SIGCONT a frozen member.
    pub fn thaw(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
    }

    fn signal(&self, i: usize, sig: i32) {
        let pid = self.members[i].child.as_ref().expect("running member").id();
        assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
    }

    /// Start a killed member again on its data dir.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.launch(i, "existing");
    }

    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// Wait until every running member answers `/health` with `true`.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            loop {
                if health(m.client) {
                    break;
                }
                if Instant::now() > deadline {
                    let log =
                        std::fs::read_to_string(m.data.with_extension("log")).unwrap_or_default();
                    panic!(
                        "etcd member {} not healthy within {within:?}; log tail:\n{}",
                        m.name,
                        &log[log.len().saturating_sub(3000)..]
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn health(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
