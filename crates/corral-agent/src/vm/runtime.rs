//! The running side of a VM behind the [`Runtime`] trait: launching its QEMU process (tap
//! devices, sockets, its identity and file grants from `crate::confine`, argv, the confined
//! spawn, QMP, cgroup, then letting the vCPUs run), finding it again
//! after an agent restart, and cleaning up after it exits. Only the VM's actor calls these.
//! [`QemuRuntime`] is the real one; the actor's unit tests drive a fake that answers QMP
//! without QEMU.

use crate::cgroup::CgroupSupport;
use crate::context::{error_chain, Host};
use crate::error::Error;
use crate::network;
use corral_model::host::{Accelerator, NetworkKind};
use corral_model::*;
use corral_qemu::argv::{build_argv, Launch, NicBackend, OvmfPaths, RuntimePaths};
use corral_qemu::qmp::{Qmp, QmpEvent};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// How long QEMU may take to initialise and answer on QMP.
const QMP_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Running {
    pub pid: u32,
    pub qmp: Qmp,
    pub events: broadcast::Receiver<QmpEvent>,
    pub taps: Vec<String>,
    pub cpu_weight: CpuWeightStatus,
    /// Loopback address of the VNC server (`None` if QEMU did not say).
    pub vnc: Option<String>,
}

/// Why a VM recorded running could not be re-attached after an agent restart.
#[derive(Debug, thiserror::Error)]
pub enum ReattachError {
    #[error("its QEMU process is gone")]
    Gone,
    /// The agent died between spawning QEMU (with `-S`) and `cont` of a start nobody was told
    /// about; the half-started QEMU was stopped.
    #[error("half-started: QEMU process {pid} was never given its vCPUs (the agent stopped during the start); stopped it")]
    HalfStarted { pid: u32 },
    #[error("QEMU process {pid} does not answer on QMP")]
    NoAnswer {
        pid: u32,
        #[source]
        source: corral_qemu::qmp::QmpError,
    },
    #[error("query-status failed")]
    Status(#[source] corral_qemu::qmp::QmpError),
    #[error("cannot finish the start (cont)")]
    FinishStart(#[source] corral_qemu::qmp::QmpError),
}

/// What the actor needs from the machinery that runs guests.
pub trait Runtime: Send + Sync + 'static {
    /// Start the VM's guest; with `paused` the vCPUs stay stopped.
    fn launch(
        &self,
        rec: &VmRecord,
        paused: bool,
    ) -> impl std::future::Future<Output = Result<Running, Error>> + Send;
    /// Find the guest of a VM that was running when the agent last stopped.
    fn reattach(
        &self,
        rec: &VmRecord,
    ) -> impl std::future::Future<Output = Result<(Running, PowerState), ReattachError>> + Send;
    /// After the guest exited (or was killed): release what it held.
    fn cleanup(&self, vm_id: &str, run: &Running) -> impl std::future::Future<Output = ()> + Send;
    /// After a failed re-attach: remove what a dead guest left behind (taps, cgroup).
    fn clear_leftovers(&self, rec: &VmRecord) -> impl std::future::Future<Output = ()> + Send;
    /// Kill the guest at once.
    fn kill(&self, run: &Running);
    /// Apply a new CPU weight to a running guest.
    fn set_cpu_weight(&self, vm_id: &str, weight: u32) -> CpuWeightStatus;
}

/// The real runtime: QEMU processes, taps on bridges, cgroups.
pub struct QemuRuntime {
    host: Arc<Host>,
    qemu_binary: PathBuf,
    accel: Accelerator,
    cgroups: CgroupSupport,
    /// Run each QEMU as its own unprivileged user (`crate::confine`); needs a root agent.
    confine: bool,
}

impl QemuRuntime {
    pub fn new(
        host: Arc<Host>,
        qemu_binary: PathBuf,
        accel: Accelerator,
        cgroups: CgroupSupport,
    ) -> Self {
        QemuRuntime {
            host,
            qemu_binary,
            accel,
            cgroups,
            confine: crate::confine::available(),
        }
    }
}

impl QemuRuntime {
    /// Whether QEMUs here run as their own unprivileged users.
    pub fn confined(&self) -> bool {
        self.confine
    }

    /// `kvm` or `tcg`.
    pub fn accel_name(&self) -> &'static str {
        match self.accel {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }

    /// The `-cpu` model guests get here.
    pub fn cpu_model(&self) -> &'static str {
        match self.accel {
            Accelerator::Kvm => corral_qemu::argv::KVM_CPU,
            Accelerator::Tcg => corral_qemu::argv::TCG_CPU,
        }
    }

    /// QEMU's version and the versioned machine type `q35` stands for (`pc-q35-7.2`), from
    /// `-machine help`: what a migration's target must have to load the guest's state.
    pub async fn qemu_facts(&self) -> Result<(String, String), Error> {
        let version = corral_qemu::process::qemu_version(&self.qemu_binary)
            .await
            .map_err(|e| Error::caused(e.kind(), "cannot run QEMU", e))?
            .to_string();
        let out = tokio::process::Command::new(&self.qemu_binary)
            .args(["-machine", "help"])
            .output()
            .await
            .map_err(|e| Error::caused(ErrorKind::Internal, "cannot run QEMU", e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let machine = text
            .lines()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(corral_qemu::argv::MACHINE))
                    .then(|| l.split("(alias of ").nth(1))
                    .flatten()
                    .map(|rest| rest.trim_end_matches(')').to_string())
            })
            .unwrap_or_default();
        Ok((version, machine))
    }
}

impl Runtime for QemuRuntime {
    async fn launch(&self, rec: &VmRecord, paused: bool) -> Result<Running, Error> {
        launch(self, rec, paused).await
    }
    async fn reattach(&self, rec: &VmRecord) -> Result<(Running, PowerState), ReattachError> {
        reattach(self, rec).await
    }
    async fn cleanup(&self, vm_id: &str, run: &Running) {
        cleanup(self, vm_id, run).await
    }
    async fn clear_leftovers(&self, rec: &VmRecord) {
        remove_taps(&existing_taps(rec)).await;
        self.cgroups.remove(&rec.id);
        crate::confine::revoke_all(&self.host.layout.run_dir(&rec.id), &rec.id);
    }
    fn kill(&self, run: &Running) {
        kill_pid(run.pid)
    }
    fn set_cpu_weight(&self, vm_id: &str, weight: u32) -> CpuWeightStatus {
        CpuWeightStatus::from_result(weight, self.cgroups.update(vm_id, weight))
    }
}

pub fn paths(layout: &crate::config::Layout, vm_id: &str) -> RuntimePaths {
    RuntimePaths::in_dir(&layout.run_dir(vm_id))
}

/// Per-VM UEFI variable store, kept beside the state so it survives restarts. Secure Boot
/// has its own (made from the template with Microsoft's keys enrolled), so switching a VM
/// between `uefi` and `uefi-secure` never boots one firmware on the other's variables.
pub fn nvram_file(layout: &crate::config::Layout, vm_id: &str, firmware: Firmware) -> PathBuf {
    match firmware {
        Firmware::UefiSecure => layout.root.join("nvram").join(format!("{vm_id}-secure.fd")),
        _ => layout.nvram(vm_id),
    }
}

/// The VM's swtpm paths: state with the VM, socket and pid file in its run directory.
pub fn tpm_paths(layout: &crate::config::Layout, vm_id: &str) -> super::tpm::TpmPaths {
    super::tpm::TpmPaths::new(
        crate::vmfiles::tpm_dir(layout, vm_id),
        &layout.run_dir(vm_id),
    )
}

fn prepare_ovmf(
    layout: &crate::config::Layout,
    vm_id: &str,
    firmware: Firmware,
) -> Result<OvmfPaths, Error> {
    let found = match firmware {
        Firmware::UefiSecure => corral_qemu::firmware::find_ovmf_secure(),
        _ => corral_qemu::firmware::find_ovmf(),
    };
    let fw = found.ok_or_else(|| {
        Error::new(
            ErrorKind::Unsupported,
            match firmware {
                Firmware::UefiSecure => "Secure Boot firmware needs Debian's ovmf package (no OVMF_CODE_4M.secboot.fd with OVMF_VARS_4M.ms.fd under /usr/share/OVMF)",
                _ => "UEFI firmware needs Debian's ovmf package (no OVMF code under /usr/share/OVMF)",
            },
        )
    })?;
    let vars = nvram_file(layout, vm_id, firmware);
    if !vars.exists() {
        std::fs::create_dir_all(vars.parent().unwrap_or(Path::new("/")))
            .and_then(|_| std::fs::copy(&fw.vars_template, &vars).map(|_| ()))
            .map_err(|e| {
                Error::internal(format!(
                    "cannot create UEFI variable store {}: {e}",
                    vars.display()
                ))
            })?;
    }
    Ok(OvmfPaths {
        code: fw.code,
        vars,
    })
}

/// Check that everything the VM refers to is still there before starting QEMU, so the user
/// gets "disk disk0: volume ... is missing" instead of a QEMU error.
fn preflight(spec: &VmSpec) -> Result<(), Error> {
    for d in &spec.disks {
        if !d.path.exists() {
            return Err(Error::invalid(format!(
                "disk {}: volume {} is missing",
                d.device,
                d.path.display()
            )));
        }
    }
    for c in &spec.cdroms {
        if let Some(m) = &c.media {
            if !m.exists() {
                return Err(Error::invalid(format!(
                    "{}: ISO {} is missing (eject it or insert another)",
                    c.device,
                    m.display()
                )));
            }
        }
    }
    if let Some(k) = &spec.kernel_boot {
        for p in std::iter::once(&k.kernel).chain(k.initrd.iter()) {
            if !p.exists() {
                return Err(Error::invalid(format!(
                    "kernel boot file {} is missing",
                    p.display()
                )));
            }
        }
    }
    Ok(())
}

/// The host side of each NIC: taps created on their bridges and opened for QEMU to inherit
/// (returned with the names, the descriptors to pass), or user-mode NAT.
async fn setup_nics(
    host: &Host,
    rec: &VmRecord,
) -> Result<(Vec<NicBackend>, Vec<String>, Vec<std::os::fd::OwnedFd>), Error> {
    use std::os::fd::AsRawFd;
    let mut backends = Vec::new();
    let mut taps = Vec::new();
    let mut fds = Vec::new();
    let mut pxe_served = false;
    for (i, nic) in rec.spec.nics.iter().enumerate() {
        let net = host.network(&nic.network)?;
        match (net.kind, net.bridge) {
            (NetworkKind::Bridge, Some(bridge)) => {
                if !network::bridge_exists(&bridge) {
                    remove_taps(&taps).await;
                    return Err(Error::invalid(format!(
                        "{}: bridge {bridge:?} of network {:?} does not exist",
                        nic.device, nic.network
                    )));
                }
                let tap = network::tap_name(&rec.id, i);
                if let Err(e) = network::create_tap(&tap, &bridge).await {
                    remove_taps(&taps).await;
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!("{}: cannot attach to bridge {bridge:?} (needs root or CAP_NET_ADMIN): {e}", nic.device),
                    ));
                }
                taps.push(tap.clone());
                let fd = match network::open_tap(&tap) {
                    Ok(fd) => fd,
                    Err(e) => {
                        remove_taps(&taps).await;
                        return Err(Error::internal(format!("{}: {e}", nic.device)));
                    }
                };
                backends.push(NicBackend::Tap {
                    ifname: tap,
                    fd: Some(fd.as_raw_fd()),
                });
                fds.push(fd);
            }
            _ => {
                // During a PXE install the first NAT NIC carries the agent's boot server.
                let pxe = rec
                    .spec
                    .install
                    .as_ref()
                    .and_then(|i| i.pxe.as_ref())
                    .filter(|_| !pxe_served);
                pxe_served |= pxe.is_some();
                backends.push(NicBackend::User {
                    hostfwd: vec![],
                    tftp_root: pxe.map(|p| p.tftp_root.clone()),
                    boot_file: pxe.map(|p| p.boot_file.clone()),
                })
            }
        }
    }
    Ok((backends, taps, fds))
}

pub(crate) async fn remove_taps(taps: &[String]) {
    for t in taps {
        network::delete_tap(t).await;
    }
}

fn remove_stale(paths: &RuntimePaths) {
    for p in [&paths.qmp_socket, &paths.serial_socket, &paths.pidfile] {
        let _ = std::fs::remove_file(p);
    }
}

/// Start QEMU for `rec` as the target of a live migration: same devices, `-incoming defer`,
/// no `-S` (QEMU runs the guest as soon as the state has arrived, which keeps the downtime
/// to what QEMU measures).
pub async fn launch_incoming(rt: &QemuRuntime, rec: &VmRecord) -> Result<Running, Error> {
    launch_as(rt, rec, true, true).await
}

/// Start QEMU for `rec` and return once the vCPUs run.
async fn launch(rt: &QemuRuntime, rec: &VmRecord, paused: bool) -> Result<Running, Error> {
    launch_as(rt, rec, paused, false).await
}

async fn launch_as(
    rt: &QemuRuntime,
    rec: &VmRecord,
    paused: bool,
    incoming: bool,
) -> Result<Running, Error> {
    preflight(&rec.spec)?;
    let layout = &rt.host.layout;
    let run_dir = layout.run_dir(&rec.id);
    // Grants left by a QEMU of this VM that died unnoticed go before anything new.
    crate::confine::revoke_all(&run_dir, &rec.id);
    let mut undo = Undo {
        tpm: tpm_paths(layout, &rec.id),
        taps: Vec::new(),
        run_dir: run_dir.clone(),
        vm_id: rec.id.clone(),
        pid: None,
    };
    let result = launch_steps(rt, rec, paused, incoming, &mut undo).await;
    if result.is_err() {
        undo.run().await;
    }
    result
}

/// What a failed start must take back: its QEMU, the swtpm, taps and the file grants.
struct Undo {
    tpm: super::tpm::TpmPaths,
    taps: Vec<String>,
    run_dir: PathBuf,
    vm_id: String,
    pid: Option<u32>,
}

impl Undo {
    async fn run(self) {
        if let Some(pid) = self.pid {
            kill_pid(pid);
        }
        super::tpm::stop(&self.tpm);
        remove_taps(&self.taps).await;
        crate::confine::revoke_all(&self.run_dir, &self.vm_id);
    }
}

/// Bind a listening unix socket at `path` for QEMU to inherit (close-on-exec here; the
/// spawn makes it inheritable in QEMU alone).
fn listen(path: &Path) -> Result<std::os::unix::net::UnixListener, Error> {
    let _ = std::fs::remove_file(path);
    std::os::unix::net::UnixListener::bind(path).map_err(|e| {
        Error::caused(
            ErrorKind::Internal,
            format!("cannot listen on {}", path.display()),
            e,
        )
    })
}

/// Create (or empty) a file QEMU will write, so QEMU needs no write access to the directory.
fn precreate(path: &Path) -> Result<(), Error> {
    std::fs::write(path, b"").map_err(|e| {
        Error::caused(
            ErrorKind::Internal,
            format!("cannot create {}", path.display()),
            e,
        )
    })
}

/// Every file QEMU opens itself for this launch, with the access it needs: its own files
/// read-write, shared ones read-only.
fn files_for_qemu(launch: &Launch, tpm_socket: Option<&Path>) -> Vec<(PathBuf, u16)> {
    use crate::confine::{R, W, X};
    let spec = launch.spec;
    let p = &launch.paths;
    let mut files = vec![
        (
            p.pidfile.parent().unwrap_or(Path::new("/")).to_path_buf(),
            X,
        ),
        (p.pidfile.clone(), R | W),
        (p.runtime_log.clone(), R | W),
        (p.serial_log.clone(), R | W),
    ];
    for d in &spec.disks {
        files.push((d.path.clone(), R | W));
        // Bases of linked clones and templates: shared, never written.
        for b in corral_storage::overlay::backing_chain(&d.path) {
            files.push((b, R));
        }
    }
    for c in &spec.cdroms {
        if let Some(m) = &c.media {
            files.push((m.clone(), R));
        }
    }
    if let Some(k) = &spec.kernel_boot {
        files.push((k.kernel.clone(), R));
        if let Some(i) = &k.initrd {
            files.push((i.clone(), R));
        }
    }
    if let Some(o) = &launch.ovmf {
        files.push((o.code.clone(), R));
        files.push((o.vars.clone(), R | W));
    }
    if let Some(s) = tpm_socket {
        files.push((s.to_path_buf(), R | W));
    }
    files
}

async fn launch_steps(
    rt: &QemuRuntime,
    rec: &VmRecord,
    paused: bool,
    incoming: bool,
    undo: &mut Undo,
) -> Result<Running, Error> {
    use std::os::fd::AsRawFd;
    let layout = &rt.host.layout;
    let run_dir = layout.run_dir(&rec.id);
    std::fs::create_dir_all(&run_dir).map_err(|e| {
        Error::caused(
            ErrorKind::Internal,
            format!("cannot create {}", run_dir.display()),
            e,
        )
    })?;
    let paths = paths(layout, &rec.id);
    remove_stale(&paths);
    // The console log shows this run only; QEMU appends to it, the pid file and the runtime
    // log are QEMU's to fill, but made here: QEMU creates no files.
    for f in [&paths.serial_log, &paths.pidfile, &paths.runtime_log] {
        precreate(f)?;
    }
    let qmp_listener = listen(&paths.qmp_socket)?;
    let serial_listener = listen(&paths.serial_socket)?;
    let ovmf = match rec.spec.firmware {
        f @ (Firmware::Uefi | Firmware::UefiSecure) => Some(prepare_ovmf(layout, &rec.id, f)?),
        Firmware::Bios => None,
    };
    let tpm_socket = if rec.spec.tpm {
        let socket = super::tpm::start(&undo.tpm)
            .await
            .map_err(|e| Error::caused(e.kind(), "cannot start the TPM", e))?;
        Some(socket)
    } else {
        None
    };
    let (nics, taps, tap_fds) = setup_nics(&rt.host, rec).await?;
    undo.taps = taps.clone();
    let identity = if rt.confine {
        Some(crate::confine::allocate(&layout.root.join("run"), &rec.id)?)
    } else {
        None
    };
    let launch = Launch {
        spec: &rec.spec,
        vm_id: &rec.id,
        accel: rt.accel,
        paths: paths.clone(),
        nics,
        ovmf,
        tpm_socket: tpm_socket.clone(),
        daemonize: false,
        incoming,
        sandbox: true,
        identity,
        listen_fds: Some(corral_qemu::argv::ListenFds {
            qmp: qmp_listener.as_raw_fd(),
            serial: serial_listener.as_raw_fd(),
        }),
    };
    let mut argv = build_argv(&launch).map_err(|e| Error::new(e.kind(), e.to_string()))?;
    if let Some(id) = identity {
        let mut files = files_for_qemu(&launch, tpm_socket.as_deref());
        // A PXE install's boot directory, served by QEMU's own TFTP server.
        let pxe = rec.spec.install.as_ref().and_then(|i| i.pxe.as_ref());
        files.retain(|(p, _)| pxe.is_none_or(|x| !p.starts_with(&x.tftp_root)));
        crate::confine::grant(&run_dir, id.uid, &files)?;
        if let Some(pxe) = pxe {
            crate::confine::grant_tree(&run_dir, id.uid, &pxe.tftp_root)?;
        }
    }
    // Hold the vCPUs until the process sits in its cgroup with its weight (a migration
    // target has no vCPUs to run until the state arrives).
    if !incoming {
        argv.push("-S".into());
    }
    let log = run_dir.join("qemu.log");
    // The cgroup exists before QEMU does; moving QEMU into it overlaps QEMU's own start.
    let prepared = rt.cgroups.prepare(&rec.id, rec.spec.cpu_weight);
    let stop_mover = Arc::new(AtomicBool::new(false));
    let mover = prepared.is_ok().then(|| {
        let (cgroups, vm_id, pidfile, stop) = (
            rt.cgroups.clone(),
            rec.id.clone(),
            paths.pidfile.clone(),
            stop_mover.clone(),
        );
        tokio::task::spawn_blocking(move || move_when_daemonized(&cgroups, &vm_id, &pidfile, &stop))
    });
    let keep_fds: Vec<i32> = [qmp_listener.as_raw_fd(), serial_listener.as_raw_fd()]
        .into_iter()
        .chain(tap_fds.iter().map(|f| f.as_raw_fd()))
        .collect();
    let spawned = corral_qemu::process::spawn_confined(
        &rt.qemu_binary,
        &argv,
        &log,
        identity,
        &keep_fds,
        &paths.qmp_socket,
        QMP_TIMEOUT,
    )
    .await;
    // QEMU holds its own copies now (or failed): the agent's are closed.
    drop((qmp_listener, serial_listener, tap_fds));
    stop_mover.store(true, Ordering::Relaxed);
    let (pid, qmp) = spawned.map_err(|e| Error::caused(e.kind(), "QEMU did not start", e))?;
    undo.pid = Some(pid);
    let moved = match mover {
        Some(handle) => handle.await.unwrap_or_else(|e| Err(e.to_string())),
        None => Err("no cgroup".into()),
    };
    let cpu_weight = cpu_weight_after_move(
        &rt.cgroups,
        &rec.id,
        pid,
        rec.spec.cpu_weight,
        prepared,
        moved,
    );
    let events = qmp.subscribe();
    if !paused {
        qmp.execute("cont", serde_json::json!({}))
            .await
            .map_err(|e| Error::caused(e.kind(), "cannot start the vCPUs", e))?;
    }
    let vnc = vnc_address(&qmp).await;
    Ok(Running {
        pid,
        qmp,
        events,
        taps,
        cpu_weight,
        vnc,
    })
}

/// Wait (polling, 1 ms steps) for QEMU's pid file, then move that process into the VM's
/// cgroup. QEMU writes the file early in its initialisation (it used to be right after
/// `-daemonize`, about 10 ms into a start that takes about 80 ms), so the cgroup move (an RCU grace period on cgroup v1) runs while QEMU
/// initialises instead of after it. Gives up when `stop` is set and the file never appeared.
fn move_when_daemonized(
    cgroups: &crate::cgroup::CgroupSupport,
    vm_id: &str,
    pidfile: &std::path::Path,
    stop: &AtomicBool,
) -> Result<u32, String> {
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .filter(|p| *p > 1)
        {
            let t0 = std::time::Instant::now();
            cgroups.move_pid(vm_id, pid)?;
            tracing::debug!(
                vm = vm_id,
                pid,
                move_ms = t0.elapsed().as_secs_f64() * 1000.0,
                "QEMU moved into its cgroup while initialising"
            );
            return Ok(pid);
        }
        if stopping {
            return Err("QEMU's pid file did not appear".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The CPU weight status of a fresh QEMU: the early move must have caught the QEMU
/// process (the pid the start returned); otherwise move it now, the slow way.
fn cpu_weight_after_move(
    cgroups: &CgroupSupport,
    vm_id: &str,
    pid: u32,
    weight: u32,
    prepared: Result<String, String>,
    moved: Result<u32, String>,
) -> CpuWeightStatus {
    let outcome = match (prepared, moved) {
        (Err(reason), _) => Err(reason),
        (Ok(applied), Ok(moved)) if moved == pid && cgroups.contains(vm_id, pid) => Ok(applied),
        (Ok(applied), early) => {
            tracing::debug!(
                vm = vm_id,
                ?early,
                "early cgroup move missed QEMU; moving it now"
            );
            cgroups.move_pid(vm_id, pid).map(|_| applied)
        }
    };
    if let Err(reason) = &outcome {
        tracing::warn!(vm = vm_id, %reason, "CPU weight not applied");
    }
    CpuWeightStatus::from_result(weight, outcome)
}

/// Tap devices of the VM's bridged NICs that exist on the host now.
fn existing_taps(rec: &VmRecord) -> Vec<String> {
    (0..rec.spec.nics.len())
        .map(|i| network::tap_name(&rec.id, i))
        .filter(|t| Path::new("/sys/class/net").join(t).exists())
        .collect()
}

/// Find the QEMU of a VM that was running when the agent last stopped, and check its swtpm
/// (when it has a TPM): one whose QEMU is gone is stopped too (normally it has already
/// exited by itself, see `super::tpm`).
async fn reattach(
    rt: &QemuRuntime,
    rec: &VmRecord,
) -> Result<(Running, PowerState), ReattachError> {
    let r = reattach_qemu(rt, rec).await;
    if rec.spec.tpm {
        let tpm = tpm_paths(&rt.host.layout, &rec.id);
        match &r {
            Err(_) => super::tpm::stop(&tpm),
            Ok((run, _)) if super::tpm::find(&tpm).is_none() => tracing::warn!(
                vm = %rec.spec.name, pid = run.pid,
                "QEMU is running but its swtpm is gone: the guest's TPM no longer answers until the VM is restarted"
            ),
            Ok(_) => {}
        }
    }
    r
}

async fn reattach_qemu(
    rt: &QemuRuntime,
    rec: &VmRecord,
) -> Result<(Running, PowerState), ReattachError> {
    let paths = paths(&rt.host.layout, &rec.id);
    let pid = corral_qemu::process::find_vm_process(&paths.pidfile, &rec.id)
        .ok_or(ReattachError::Gone)?;
    let qmp = Qmp::connect(&paths.qmp_socket, Duration::from_secs(5))
        .await
        .map_err(|source| ReattachError::NoAnswer { pid, source })?;
    let events = qmp.subscribe();
    let status = qmp
        .execute("query-status", serde_json::json!({}))
        .await
        .map_err(ReattachError::Status)?;
    let state = match status.get("status").and_then(|s| s.as_str()) {
        Some("running") => PowerState::Running,
        // `prelaunch`: QEMU was spawned with -S and `cont` never came. Recorded paused, it
        // was started with --paused; recorded running, finish that start; recorded halted,
        // the agent died between spawn and `cont` and nobody was told the VM started, so the
        // half-started QEMU is stopped and the VM stays halted.
        Some("prelaunch") => match rec.power_state {
            PowerState::Paused => PowerState::Paused,
            PowerState::Running => {
                qmp.execute("cont", serde_json::json!({}))
                    .await
                    .map_err(ReattachError::FinishStart)?;
                PowerState::Running
            }
            PowerState::Halted => {
                kill_pid(pid);
                return Err(ReattachError::HalfStarted { pid });
            }
        },
        _ => PowerState::Paused,
    };
    let taps = existing_taps(rec);
    let vnc = vnc_address(&qmp).await;
    let cpu_weight = rt.set_cpu_weight(&rec.id, rec.spec.cpu_weight);
    Ok((
        Running {
            pid,
            qmp,
            events,
            taps,
            cpu_weight,
            vnc,
        },
        state,
    ))
}

/// `127.0.0.1:5900` as QEMU reports it (QMP `query-vnc`): the port is only known once QEMU
/// picked a free display, and asking again on re-attach survives agent restarts.
async fn vnc_address(qmp: &Qmp) -> Option<String> {
    match qmp.query_vnc().await {
        Ok(Some((host, port))) => Some(format!("{host}:{port}")),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "query-vnc failed");
            None
        }
    }
}

pub(crate) fn kill_pid(pid: u32) {
    let _ = corral_qemu::process::send_signal(pid, corral_qemu::process::Signal::Kill);
}

fn pid_alive(pid: u32) -> bool {
    corral_qemu::process::is_alive(pid)
}

/// After QEMU has exited (or been killed): wait for the pid to vanish, remove taps, cgroup
/// and sockets. The console log stays for `vm console --log`.
async fn cleanup(rt: &QemuRuntime, vm_id: &str, run: &Running) {
    for _ in 0..100 {
        if !pid_alive(run.pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if pid_alive(run.pid) {
        kill_pid(run.pid);
        // A killed QEMU takes a while to free a large guest's memory on a loaded host; its
        // files and grants are taken back only once it is gone.
        corral_qemu::process::wait_for_exit(run.pid, Duration::from_secs(3)).await;
    }
    remove_taps(&run.taps).await;
    rt.cgroups.remove(vm_id);
    // `stop` may wait up to half a second for swtpm to exit; keep that off the runtime.
    let tpm = tpm_paths(&rt.host.layout, vm_id);
    let _ = tokio::task::spawn_blocking(move || super::tpm::stop(&tpm)).await;
    remove_stale(&paths(&rt.host.layout, vm_id));
    let run_dir = rt.host.layout.run_dir(vm_id);
    crate::confine::revoke_all(&run_dir, vm_id);
    // Rewritten for each migration; nothing else should keep the pool's key.
    let _ = std::fs::remove_dir_all(run_dir.join("migration-tls"));
}
