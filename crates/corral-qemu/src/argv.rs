//! The QEMU command line as a pure function of a VM spec and a few host facts.
//!
//! `build_argv` takes a [`Launch`] (the spec, the VM id, the accelerator the probe chose, the
//! per-VM runtime paths, one network backend per NIC, the OVMF files for UEFI guests) and
//! returns the exact argv (without the binary) or an [`ArgvError`] naming the offending value.
//! It does no I/O, so the golden tests under `tests/data/argv` pin every byte of it.
//!
//! Layout, chosen so that device identity never depends on what else is attached:
//! - machine `q35`; every virtio or emulated-PCI disk and NIC sits alone on its own
//!   `pcie-root-port`, and one port exists for each possible device name (`disk0`..`disk15`
//!   on slots 2-3, `nic0`..`nic7` on slot 4). A device keeps its PCI address whatever else is
//!   added or removed, the destination of a migration can rebuild the same layout, and the
//!   empty ports are where hot-plugged devices go (q35's root bus itself cannot hot-plug).
//! - `sata` and `ide` disks and all CD-ROMs are on q35's built-in AHCI controller (`ide.0` to
//!   `ide.5`, six ports). q35 has no PIIX IDE controller, so `ide` means "emulated ATA disk on
//!   AHCI"; every guest from Windows Vista / Linux 2.6.19 on drives it without extra drivers.
//!   Truly legacy guests (Windows XP/2003 without F6 drivers) would need machine `pc`; see
//!   `docs/qemu.md`.
//! - ids the agent addresses over QMP: see [`ids`].
//!
//! Escaping: QEMU parses most option values as `key=value,...` lists in which a literal comma
//! is written `,,` ([`escape_opt`]). A few options (`-pidfile`, `-D`, `-kernel`, `-initrd`, `-append`,
//! `-uuid`) take their argument verbatim and must NOT be escaped. Characters QEMU cannot carry
//! through either form (control characters: NUL, newline, tab, ...) are rejected, as are
//! relative paths (a daemonized QEMU resolves them against `/`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use corral_model::host::Accelerator;
use corral_model::{
    BootDevice, DiskBus, ErrorKind, Firmware, NicModel, VmSpec, MAX_DISKS, MAX_NICS,
};
use serde::{Deserialize, Serialize};

/// The machine type every corral VM uses.
pub const MACHINE: &str = "q35";
/// AHCI ports on q35's built-in controller (`ide.0` .. `ide.5`).
pub const AHCI_PORTS: usize = 6;
/// CPU model under KVM. `-arch-capabilities` because QEMU aborts when the host (or a nested
/// hypervisor) refuses the ARCH_CAPABILITIES MSR; the cost is that guests cannot see which
/// speculative-execution bugs the CPU is immune to and may enable mitigations they do not need.
pub const KVM_CPU: &str = "host,-arch-capabilities";
/// CPU model under TCG: everything TCG can emulate.
pub const TCG_CPU: &str = "max";

/// `-vnc` value: loopback only, first free display from 0 (port 5900) to 99 (port 5999).
pub const VNC_LISTEN: &str = "127.0.0.1:0,to=99";

/// Per-VM runtime files. All must be absolute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimePaths {
    pub qmp_socket: PathBuf,
    pub serial_socket: PathBuf,
    /// Everything the serial console printed, appended across restarts.
    pub serial_log: PathBuf,
    pub pidfile: PathBuf,
    /// QEMU's messages while it runs (`-D`): a daemonized QEMU sends its stderr there, e.g.
    /// "terminating on signal 15" or I/O errors. Truncated at each start.
    pub runtime_log: PathBuf,
}

impl RuntimePaths {
    /// The conventional names inside one per-VM run directory.
    pub fn in_dir(dir: &Path) -> Self {
        RuntimePaths {
            qmp_socket: dir.join("qmp.sock"),
            serial_socket: dir.join("serial.sock"),
            serial_log: dir.join("serial.log"),
            pidfile: dir.join("qemu.pid"),
            runtime_log: dir.join("qemu-runtime.log"),
        }
    }
}

/// The host side of one NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NicBackend {
    /// QEMU user-mode NAT.
    User {
        /// `hostfwd` rules as QEMU spells them, e.g. `tcp:127.0.0.1:2222-:22`.
        #[serde(default)]
        hostfwd: Vec<String>,
        /// Directory served by the built-in TFTP server (PXE installs).
        #[serde(default)]
        tftp_root: Option<PathBuf>,
        /// DHCP boot file name announced to PXE clients, relative to `tftp_root`.
        #[serde(default)]
        boot_file: Option<String>,
    },
    /// An existing tap device (the agent creates it and attaches it to a bridge).
    Tap {
        ifname: String,
        /// The tap opened by the agent and inherited by QEMU under this number (`fd=N`):
        /// an unprivileged QEMU cannot open `/dev/net/tun` itself. Without it QEMU opens the
        /// device by name, which only a privileged QEMU may.
        #[serde(default)]
        fd: Option<i32>,
    },
}

/// UEFI firmware: the shared read-only code and this VM's own copy of the variable store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OvmfPaths {
    pub code: PathBuf,
    pub vars: PathBuf,
}

/// Everything `build_argv` needs to start one VM.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    pub spec: &'a VmSpec,
    /// The VM's UUID: `-uuid`, and how a running QEMU is recognised after an agent restart.
    pub vm_id: &'a str,
    pub accel: Accelerator,
    pub paths: RuntimePaths,
    /// One per `spec.nics` entry, same order.
    pub nics: Vec<NicBackend>,
    /// Required when `spec.firmware` is UEFI (either flavour; for `uefi-secure` the Secure
    /// Boot code and a variable store with Microsoft's keys enrolled).
    pub ovmf: Option<OvmfPaths>,
    /// The control socket of the VM's swtpm; required when `spec.tpm`.
    pub tpm_socket: Option<PathBuf>,
    /// Add `-daemonize` so QEMU detaches and outlives the agent.
    pub daemonize: bool,
    /// Start as the target of a live migration (`-incoming defer`): same devices, no guest
    /// of its own; the agent names the listening address later with `migrate-incoming`.
    pub incoming: bool,
    /// Ask QEMU for its seccomp sandbox (`-sandbox` [`crate::confine::SANDBOX`]).
    /// Incompatible with `daemonize` (the filter forbids the fork).
    pub sandbox: bool,
    /// The unprivileged user QEMU runs as; not an option of the command line (the spawn
    /// switches to it before `exec`), but part of the launch so that a confined launch is one
    /// value, checked here: never root.
    pub identity: Option<crate::confine::Identity>,
    /// Listening sockets the agent bound for QMP and the serial console, inherited by QEMU
    /// (`fd=N` instead of `path=`): QEMU then needs no write access to the run directory,
    /// and the socket files belong to the agent.
    pub listen_fds: Option<ListenFds>,
}

/// Descriptors of listening unix sockets QEMU inherits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFds {
    pub qmp: i32,
    pub serial: i32,
}

/// Why a spec cannot be turned into a command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgvError {
    #[error("{what} is not valid UTF-8")]
    NotUtf8 { what: String },
    #[error("{what} {value:?} contains a control character, which QEMU cannot take")]
    ControlCharacter { what: String, value: String },
    #[error("{what} {path:?} is not an absolute path")]
    RelativePath { what: String, path: String },
    #[error("VM id {id:?} is not a UUID")]
    InvalidVmId { id: String },
    #[error("memory of {bytes} bytes is not a positive whole number of MiB")]
    InvalidMemory { bytes: u64 },
    #[error("{vcpus} vCPUs is outside 1..{max}")]
    InvalidVcpus { vcpus: u32, max: u32 },
    #[error("{kind} device name {name:?} is not one of {expected}")]
    InvalidDeviceName {
        kind: &'static str,
        name: String,
        expected: String,
    },
    #[error("device name {name:?} is used twice")]
    DuplicateDevice { name: String },
    #[error("NIC {device:?}: {reason}")]
    InvalidMac { device: String, reason: String },
    #[error("NIC {device:?}: tap interface name {ifname:?} {reason}")]
    InvalidIfname {
        device: String,
        ifname: String,
        reason: &'static str,
    },
    #[error("{nics} NICs in the spec but {backends} network backends")]
    NicBackendCount { nics: usize, backends: usize },
    #[error(
        "{count} SATA/IDE disks and CD-ROMs need more than the {AHCI_PORTS} AHCI ports q35 has"
    )]
    TooManyAhciDevices { count: usize },
    #[error("firmware is UEFI but no OVMF code and variable store were given")]
    MissingFirmware,
    #[error("the VM has a TPM but no swtpm socket was given")]
    MissingTpm,
    #[error("a sandboxed QEMU cannot -daemonize: the sandbox forbids the fork it needs")]
    SandboxDaemonize,
    #[error("refusing to run QEMU confined as uid {uid} gid {gid}: that is root")]
    RootIdentity { uid: u32, gid: u32 },
    #[error("file descriptor {fd} for {what} is one of stdin, stdout or stderr")]
    BadFd { what: String, fd: i32 },
}

impl ArgvError {
    /// The API error kind: bad user values are `InvalidInput`; a launch the agent assembled
    /// inconsistently is `Internal`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ArgvError::NicBackendCount { .. }
            | ArgvError::MissingFirmware
            | ArgvError::MissingTpm
            | ArgvError::SandboxDaemonize
            | ArgvError::RootIdentity { .. }
            | ArgvError::BadFd { .. } => ErrorKind::Internal,
            _ => ErrorKind::InvalidInput,
        }
    }
}

/// The ids corral gives QEMU objects, so the agent can address them over QMP.
pub mod ids {
    /// The QMP monitor chardev.
    pub const QMP_CHARDEV: &str = "qmp";
    /// The serial console chardev (`ttyS0` in the guest).
    pub const SERIAL_CHARDEV: &str = "serial0";
    /// The graphics adapter.
    pub const VIDEO: &str = "video0";
    /// The USB controller and the absolute pointer on it (keeps the VNC cursor in sync).
    pub const USB: &str = "usb";
    pub const TABLET: &str = "tablet0";
    /// The vTPM: the chardev to swtpm's control socket, the TPM backend and the CRB device.
    pub const TPM_CHARDEV: &str = "chrtpm";
    pub const TPM_BACKEND: &str = "tpm0";
    pub const TPM_DEVICE: &str = "tpm0";
    /// UEFI code and variable store block nodes.
    pub const PFLASH_CODE: &str = "pflash0";
    pub const PFLASH_VARS: &str = "pflash1";

    /// Protocol (file) node of a disk: `disk0-file`.
    pub fn disk_file_node(device: &str) -> String {
        format!("{device}-file")
    }
    /// Format (qcow2/raw) node of a disk, the one the device uses: `disk0-format`.
    /// `block_resize`, `query-named-block-nodes` and migration address this one.
    pub fn disk_format_node(device: &str) -> String {
        format!("{device}-format")
    }
    /// Legacy `-drive` id of a CD-ROM: `cdrom0-drive`. QMP commands take the qdev id
    /// (`cdrom0`) through their `id` argument; this is what `query-block` reports as `device`.
    pub fn cdrom_drive(device: &str) -> String {
        format!("{device}-drive")
    }
    /// Network backend of a NIC: `nic0-netdev`.
    pub fn netdev(device: &str) -> String {
        format!("{device}-netdev")
    }
    /// The PCIe root port reserved for a disk or NIC: `port-disk0`, `port-nic3`.
    pub fn root_port(device: &str) -> String {
        format!("port-{device}")
    }
}

/// Escape a value for QEMU's `key=value,...` option syntax: a comma is written twice.
pub fn escape_opt(value: &str) -> String {
    value.replace(',', ",,")
}

fn check_text(what: &str, value: &str) -> Result<(), ArgvError> {
    if value.chars().any(char::is_control) {
        return Err(ArgvError::ControlCharacter {
            what: what.to_string(),
            value: value.to_string(),
        });
    }
    Ok(())
}

/// A checked value for `key=value` syntax.
fn opt(what: &str, value: &str) -> Result<String, ArgvError> {
    check_text(what, value)?;
    Ok(escape_opt(value))
}

/// A checked absolute path as UTF-8, not yet escaped (for verbatim options).
fn path_raw<'p>(what: &str, path: &'p Path) -> Result<&'p str, ArgvError> {
    let text = path.to_str().ok_or_else(|| ArgvError::NotUtf8 {
        what: what.to_string(),
    })?;
    check_text(what, text)?;
    if !path.is_absolute() {
        return Err(ArgvError::RelativePath {
            what: what.to_string(),
            path: text.to_string(),
        });
    }
    Ok(text)
}

/// A checked absolute path for `key=value` syntax.
fn path_opt(what: &str, path: &Path) -> Result<String, ArgvError> {
    path_raw(what, path).map(escape_opt)
}

fn check_uuid(id: &str) -> Result<(), ArgvError> {
    let groups: Vec<&str> = id.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(ArgvError::InvalidVmId { id: id.to_string() })
    }
}

/// `disk7` -> 7 when the name is `prefix` followed by a decimal index below `max`.
fn device_index(
    kind: &'static str,
    prefix: &str,
    name: &str,
    max: usize,
) -> Result<usize, ArgvError> {
    let err = || ArgvError::InvalidDeviceName {
        kind,
        name: name.to_string(),
        expected: format!("{prefix}0..{prefix}{}", max - 1),
    };
    let digits = name.strip_prefix(prefix).ok_or_else(err)?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return Err(err());
    }
    let n: usize = digits.parse().map_err(|_| err())?;
    if n >= max {
        return Err(err());
    }
    Ok(n)
}

/// Maximum CD-ROM drives (they share the AHCI ports with SATA/IDE disks).
pub const MAX_CDROMS: usize = AHCI_PORTS;

/// PCI address on `pcie.0` of the root port reserved for a disk or NIC index.
fn root_port_addr(slot_base: usize, index: usize) -> (usize, usize) {
    (slot_base + index / 8, index % 8)
}

const DISK_PORT_SLOT: usize = 2; // slots 2 and 3: disk0..disk15
const NIC_PORT_SLOT: usize = 4; // slot 4: nic0..nic7
const VGA_ADDR: &str = "0x1";
const USB_ADDR: &str = "0x5";

fn push(argv: &mut Vec<String>, option: &str, value: impl Into<String>) {
    argv.push(option.to_string());
    argv.push(value.into());
}

/// Build QEMU's argv (without the program name) for `launch`.
/// The vTPM: QEMU talks to the VM's own swtpm (started by the agent) over its control socket
/// and presents a TPM 2.0 CRB interface (what Windows 11 and Linux's `tpm_crb` expect on q35;
/// it sits on the system bus, not on PCI, so the port layout is untouched).
fn push_tpm(argv: &mut Vec<String>, launch: &Launch) -> Result<(), ArgvError> {
    if !launch.spec.tpm {
        return Ok(());
    }
    let socket = launch.tpm_socket.as_ref().ok_or(ArgvError::MissingTpm)?;
    push(
        argv,
        "-chardev",
        format!(
            "socket,id={},path={}",
            ids::TPM_CHARDEV,
            path_opt("swtpm socket", socket)?
        ),
    );
    push(
        argv,
        "-tpmdev",
        format!(
            "emulator,id={},chardev={}",
            ids::TPM_BACKEND,
            ids::TPM_CHARDEV
        ),
    );
    push(
        argv,
        "-device",
        format!("tpm-crb,tpmdev={},id={}", ids::TPM_BACKEND, ids::TPM_DEVICE),
    );
    Ok(())
}

pub fn build_argv(launch: &Launch) -> Result<Vec<String>, ArgvError> {
    let spec = launch.spec;
    let mut argv = Vec::new();

    check_uuid(launch.vm_id)?;
    const MIB: u64 = 1 << 20;
    if spec.memory_bytes == 0 || !spec.memory_bytes.is_multiple_of(MIB) {
        return Err(ArgvError::InvalidMemory {
            bytes: spec.memory_bytes,
        });
    }
    if spec.vcpus == 0 || spec.vcpus > corral_model::MAX_VCPUS {
        return Err(ArgvError::InvalidVcpus {
            vcpus: spec.vcpus,
            max: corral_model::MAX_VCPUS,
        });
    }
    if launch.sandbox && launch.daemonize {
        return Err(ArgvError::SandboxDaemonize);
    }
    if let Some(id) = launch.identity {
        if id.uid == 0 || id.gid == 0 {
            return Err(ArgvError::RootIdentity {
                uid: id.uid,
                gid: id.gid,
            });
        }
    }
    if let Some(fds) = launch.listen_fds {
        check_fd("QMP socket", fds.qmp)?;
        check_fd("serial console socket", fds.serial)?;
    }
    if launch.nics.len() != spec.nics.len() {
        return Err(ArgvError::NicBackendCount {
            nics: spec.nics.len(),
            backends: launch.nics.len(),
        });
    }

    // Device names: unique, and of the fixed forms the port layout relies on.
    let mut seen = HashSet::new();
    let disk_idx = spec
        .disks
        .iter()
        .map(|d| device_index("disk", "disk", &d.device, MAX_DISKS))
        .collect::<Result<Vec<_>, _>>()?;
    for cdrom in &spec.cdroms {
        device_index("CD-ROM", "cdrom", &cdrom.device, MAX_CDROMS)?;
    }
    let nic_idx = spec
        .nics
        .iter()
        .map(|n| device_index("NIC", "nic", &n.device, MAX_NICS))
        .collect::<Result<Vec<_>, _>>()?;
    let names = spec
        .disks
        .iter()
        .map(|d| &d.device)
        .chain(spec.cdroms.iter().map(|c| &c.device))
        .chain(spec.nics.iter().map(|n| &n.device));
    for name in names {
        if !seen.insert(name.as_str()) {
            return Err(ArgvError::DuplicateDevice { name: name.clone() });
        }
    }
    let ahci_count = spec
        .disks
        .iter()
        .filter(|d| d.bus != DiskBus::Virtio)
        .count()
        + spec.cdroms.len();
    if ahci_count > AHCI_PORTS {
        return Err(ArgvError::TooManyAhciDevices { count: ahci_count });
    }

    // Identity and machine.
    push(
        &mut argv,
        "-name",
        format!("guest={},debug-threads=on", opt("VM name", &spec.name)?),
    );
    push(&mut argv, "-uuid", launch.vm_id);
    if launch.sandbox {
        push(&mut argv, "-sandbox", crate::confine::SANDBOX);
    }
    let mut machine = String::from(MACHINE);
    let mut pflash = Vec::new();
    if spec.firmware.is_uefi() {
        let ovmf = launch.ovmf.as_ref().ok_or(ArgvError::MissingFirmware)?;
        let code = path_opt("OVMF code", &ovmf.code)?;
        let vars = path_opt("OVMF variable store", &ovmf.vars)?;
        for (node, file, read_only) in [
            (ids::PFLASH_CODE, code, true),
            (ids::PFLASH_VARS, vars, false),
        ] {
            let ro = if read_only { ",read-only=on" } else { "" };
            pflash.push(format!(
                "driver=file,node-name={node}-file,filename={file}{ro}"
            ));
            pflash.push(format!("driver=raw,node-name={node},file={node}-file{ro}"));
        }
        machine.push_str(&format!(
            ",pflash0={},pflash1={}",
            ids::PFLASH_CODE,
            ids::PFLASH_VARS
        ));
    }
    if spec.firmware == Firmware::UefiSecure {
        // OVMF's Secure Boot build keeps its variables in SMM so the OS cannot rewrite the
        // keys: q35 needs SMM on, and the flash only writable from SMM.
        machine.push_str(",smm=on");
    }
    push(&mut argv, "-machine", machine);
    if spec.firmware == Firmware::UefiSecure {
        push(
            &mut argv,
            "-global",
            "driver=cfi.pflash01,property=secure,value=on",
        );
    }
    match launch.accel {
        Accelerator::Kvm => {
            push(&mut argv, "-accel", "kvm");
            push(&mut argv, "-cpu", KVM_CPU);
        }
        Accelerator::Tcg => {
            push(&mut argv, "-accel", "tcg,thread=multi");
            push(&mut argv, "-cpu", TCG_CPU);
        }
    }
    push(&mut argv, "-m", (spec.memory_bytes / MIB).to_string());
    push(
        &mut argv,
        "-smp",
        format!("{n},sockets=1,cores={n},threads=1", n = spec.vcpus),
    );
    argv.extend(["-nodefaults", "-no-user-config"].map(String::from));
    if spec.install.is_some() {
        // The installer's final reboot must end QEMU so the agent can switch to disk boot.
        argv.push("-no-reboot".into());
    }
    push(&mut argv, "-display", "none");
    push(&mut argv, "-msg", "timestamp=on");
    if launch.incoming {
        push(&mut argv, "-incoming", "defer");
    }

    // Runtime plumbing: pid file, QMP, serial console, VNC.
    let p = &launch.paths;
    push(&mut argv, "-pidfile", path_raw("pid file", &p.pidfile)?);
    if launch.daemonize {
        argv.push("-daemonize".into());
    }
    push(
        &mut argv,
        "-D",
        path_raw("QEMU runtime log", &p.runtime_log)?,
    );
    // With inherited listening sockets the paths still say where the agent bound them.
    let (qmp_addr, serial_addr) = match launch.listen_fds {
        Some(fds) => (format!("fd={}", fds.qmp), format!("fd={}", fds.serial)),
        None => (
            format!("path={}", path_opt("QMP socket", &p.qmp_socket)?),
            format!(
                "path={}",
                path_opt("serial console socket", &p.serial_socket)?
            ),
        ),
    };
    push(
        &mut argv,
        "-chardev",
        format!(
            "socket,id={},{qmp_addr},server=on,wait=off",
            ids::QMP_CHARDEV,
        ),
    );
    push(
        &mut argv,
        "-mon",
        format!("chardev={},mode=control", ids::QMP_CHARDEV),
    );
    push(
        &mut argv,
        "-chardev",
        format!(
            "socket,id={},{serial_addr},server=on,wait=off,logfile={},logappend=on",
            ids::SERIAL_CHARDEV,
            path_opt("serial console log", &p.serial_log)?
        ),
    );
    push(
        &mut argv,
        "-serial",
        format!("chardev:{}", ids::SERIAL_CHARDEV),
    );
    // The graphical console listens on loopback TCP only (VNC clients speak TCP, and a unix
    // socket would need a forwarder): QEMU takes the first free display from :0 to :99
    // itself, so concurrent starts never race for a port; the agent reads the port back with
    // QMP `query-vnc`.
    push(&mut argv, "-vnc", VNC_LISTEN.to_string());
    push(
        &mut argv,
        "-device",
        format!("VGA,id={},bus=pcie.0,addr={VGA_ADDR}", ids::VIDEO),
    );
    push(
        &mut argv,
        "-device",
        format!("qemu-xhci,id={},bus=pcie.0,addr={USB_ADDR}", ids::USB),
    );
    push(
        &mut argv,
        "-device",
        format!("usb-tablet,id={},bus={}.0", ids::TABLET, ids::USB),
    );

    // One root port per possible disk and NIC name.
    let ports = (0..MAX_DISKS)
        .map(|i| (format!("disk{i}"), root_port_addr(DISK_PORT_SLOT, i)))
        .chain((0..MAX_NICS).map(|i| (format!("nic{i}"), root_port_addr(NIC_PORT_SLOT, i))));
    for (chassis, (device, (slot, function))) in ports.enumerate() {
        let multifunction = if function == 0 {
            ",multifunction=on"
        } else {
            ""
        };
        push(
            &mut argv,
            "-device",
            format!(
                "pcie-root-port,id={},bus=pcie.0,addr={slot:#x}.{function:#x},chassis={}{multifunction}",
                ids::root_port(&device),
                chassis + 1
            ),
        );
    }

    for value in pflash {
        push(&mut argv, "-blockdev", value);
    }
    push_tpm(&mut argv, launch)?;

    // Boot order: the chosen class first, then disks and CD-ROMs; NICs only when chosen, so a
    // blank disk falls through to the installer CD instead of waiting for PXE timeouts.
    #[derive(Clone, Copy, PartialEq)]
    enum Class {
        Disk,
        Cdrom,
        Nic,
    }
    let order: &[Class] = match spec.boot_device {
        BootDevice::Disk => &[Class::Disk, Class::Cdrom],
        BootDevice::Cdrom => &[Class::Cdrom, Class::Disk],
        BootDevice::Network => &[Class::Nic, Class::Disk, Class::Cdrom],
    };
    let mut disk_boot = vec![None; spec.disks.len()];
    let mut cdrom_boot = vec![None; spec.cdroms.len()];
    let mut nic_boot = vec![None; spec.nics.len()];
    let mut next: u32 = 1;
    for class in order {
        let target = match class {
            Class::Disk => &mut disk_boot,
            Class::Cdrom => &mut cdrom_boot,
            Class::Nic => &mut nic_boot,
        };
        for slot in target.iter_mut() {
            *slot = Some(next);
            next += 1;
        }
    }
    let bootindex = |b: Option<u32>| b.map(|n| format!(",bootindex={n}")).unwrap_or_default();

    // Disks: -blockdev file + format nodes, then the device.
    let mut ahci_port = 0;
    for ((disk, idx), boot) in spec.disks.iter().zip(&disk_idx).zip(&disk_boot) {
        let dev = &disk.device;
        let file = path_opt(&format!("disk {dev:?} path"), &disk.path)?;
        push(
            &mut argv,
            "-blockdev",
            format!(
                "driver=file,node-name={},filename={file},cache.direct=off,cache.no-flush=off,discard=unmap",
                ids::disk_file_node(dev)
            ),
        );
        push(
            &mut argv,
            "-blockdev",
            format!(
                "driver={},node-name={},file={},discard=unmap",
                disk.format.as_str(),
                ids::disk_format_node(dev),
                ids::disk_file_node(dev)
            ),
        );
        let device = match disk.bus {
            DiskBus::Virtio => format!(
                "virtio-blk-pci,id={dev},drive={},serial={dev},bus={},addr=0x0",
                ids::disk_format_node(dev),
                ids::root_port(&format!("disk{idx}"))
            ),
            DiskBus::Sata | DiskBus::Ide => {
                let port = ahci_port;
                ahci_port += 1;
                format!(
                    "ide-hd,id={dev},drive={},serial={dev},bus=ide.{port}",
                    ids::disk_format_node(dev)
                )
            }
        };
        push(
            &mut argv,
            "-device",
            format!("{device}{}", bootindex(*boot)),
        );
    }

    // CD-ROMs: always ATAPI on AHCI (virtio-blk cannot be a CD); a legacy -drive whose nodes
    // QEMU frees on eject, so changing media never leaks open ISO files.
    for (cdrom, boot) in spec.cdroms.iter().zip(&cdrom_boot) {
        let dev = &cdrom.device;
        let media = match &cdrom.media {
            Some(path) => format!(
                ",file={},format=raw,readonly=on",
                path_opt(&format!("CD-ROM {dev:?} media"), path)?
            ),
            None => String::new(),
        };
        push(
            &mut argv,
            "-drive",
            format!("if=none,id={},media=cdrom{media}", ids::cdrom_drive(dev)),
        );
        let port = ahci_port;
        ahci_port += 1;
        push(
            &mut argv,
            "-device",
            format!(
                "ide-cd,id={dev},drive={},bus=ide.{port}{}",
                ids::cdrom_drive(dev),
                bootindex(*boot)
            ),
        );
    }

    // NICs.
    for (((nic, idx), backend), boot) in spec
        .nics
        .iter()
        .zip(&nic_idx)
        .zip(&launch.nics)
        .zip(&nic_boot)
    {
        let dev = &nic.device;
        corral_model::validate::validate_mac(&nic.mac).map_err(|reason| ArgvError::InvalidMac {
            device: dev.clone(),
            reason,
        })?;
        let netdev = match backend {
            NicBackend::User {
                hostfwd,
                tftp_root,
                boot_file,
            } => {
                let mut v = format!("user,id={}", ids::netdev(dev));
                for rule in hostfwd {
                    v.push_str(&format!(
                        ",hostfwd={}",
                        opt(&format!("NIC {dev:?} hostfwd rule"), rule)?
                    ));
                }
                if let Some(root) = tftp_root {
                    v.push_str(&format!(
                        ",tftp={}",
                        path_opt(&format!("NIC {dev:?} TFTP root"), root)?
                    ));
                }
                if let Some(file) = boot_file {
                    v.push_str(&format!(
                        ",bootfile={}",
                        opt(&format!("NIC {dev:?} boot file"), file)?
                    ));
                }
                v
            }
            NicBackend::Tap { ifname, fd } => {
                check_ifname(dev, ifname)?;
                match fd {
                    // QEMU refuses ifname and scripts beside fd: the agent made the tap.
                    Some(fd) => {
                        check_fd(&format!("NIC {dev:?} tap"), *fd)?;
                        format!("tap,id={},fd={fd}", ids::netdev(dev))
                    }
                    None => format!(
                        "tap,id={},ifname={},script=no,downscript=no",
                        ids::netdev(dev),
                        escape_opt(ifname)
                    ),
                }
            }
        };
        push(&mut argv, "-netdev", netdev);
        let model = match nic.model {
            NicModel::Virtio => "virtio-net-pci",
            NicModel::E1000 => "e1000",
            NicModel::Rtl8139 => "rtl8139",
        };
        push(
            &mut argv,
            "-device",
            format!(
                "{model},id={dev},netdev={},mac={},bus={},addr=0x0{}",
                ids::netdev(dev),
                nic.mac.to_ascii_lowercase(),
                ids::root_port(&format!("nic{idx}")),
                bootindex(*boot)
            ),
        );
    }

    // Direct kernel boot: these options take their argument verbatim (no comma escaping).
    if let Some(kb) = &spec.kernel_boot {
        push(&mut argv, "-kernel", path_raw("kernel", &kb.kernel)?);
        if let Some(initrd) = &kb.initrd {
            push(&mut argv, "-initrd", path_raw("initrd", initrd)?);
        }
        if !kb.cmdline.is_empty() {
            check_text("kernel command line", &kb.cmdline)?;
            push(&mut argv, "-append", kb.cmdline.as_str());
        }
    }
    push(&mut argv, "-boot", "strict=on");
    Ok(argv)
}

/// An inherited descriptor must not be 0..2, which the spawn points at /dev/null and the log.
fn check_fd(what: &str, fd: i32) -> Result<(), ArgvError> {
    if fd <= 2 {
        return Err(ArgvError::BadFd {
            what: what.to_string(),
            fd,
        });
    }
    Ok(())
}

/// Linux interface names: 1..15 bytes, no `/`, `:` or whitespace, not `.` or `..`.
fn check_ifname(device: &str, ifname: &str) -> Result<(), ArgvError> {
    let reason = if ifname.is_empty() {
        Some("is empty")
    } else if ifname.len() > 15 {
        Some("is longer than 15 bytes")
    } else if ifname == "." || ifname == ".." {
        Some("is reserved")
    } else if ifname
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("contains '/', ':', whitespace or a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ArgvError::InvalidIfname {
            device: device.to_string(),
            ifname: ifname.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_doubles_commas_only() {
        assert_eq!(escape_opt("a,b,,c"), "a,,b,,,,c");
        assert_eq!(escape_opt("sp ace \"q\" ü"), "sp ace \"q\" ü");
    }

    #[test]
    fn device_names() {
        assert_eq!(device_index("disk", "disk", "disk0", 16), Ok(0));
        assert_eq!(device_index("disk", "disk", "disk15", 16), Ok(15));
        for bad in ["disk16", "disk", "disk01", "disk-1", "xdisk1", "disk1 "] {
            assert!(device_index("disk", "disk", bad, 16).is_err(), "{bad}");
        }
    }

    #[test]
    fn uuids() {
        assert!(check_uuid("3f2b1c4e-8a9d-4e1f-9b2a-0c1d2e3f4a5b").is_ok());
        assert!(check_uuid("3f2b1c4e-8a9d-4e1f-9b2a-0c1d2e3f4a5").is_err());
        assert!(check_uuid("3f2b1c4e,8a9d-4e1f-9b2a-0c1d2e3f4a5b").is_err());
    }

    #[test]
    fn ifnames() {
        assert!(check_ifname("nic0", "tap-web01-0").is_ok());
        assert!(check_ifname("nic0", "tap,0").is_ok());
        assert!(check_ifname("nic0", "").is_err());
        assert!(check_ifname("nic0", "a/b").is_err());
        assert!(check_ifname("nic0", "0123456789abcdef").is_err());
    }

    #[test]
    fn root_ports_are_fixed_per_name() {
        assert_eq!(root_port_addr(DISK_PORT_SLOT, 0), (2, 0));
        assert_eq!(root_port_addr(DISK_PORT_SLOT, 9), (3, 1));
        assert_eq!(root_port_addr(NIC_PORT_SLOT, 7), (4, 7));
    }
}
