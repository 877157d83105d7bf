//! `corral p2v media`: the cold-P2V boot media (issue 12). A server booted from it runs a
//! small Linux in RAM that never mounts the server's disk; a wizard on the console asks the
//! chapter's questions (or reads them from the media or the kernel command line, for an
//! unattended run) and runs `corral p2v --source-disk`, which copies the idle disk in one
//! pass to the agent, where it is converted like any P2V.
//!
//! How the media is made, all from this host: its kernel (`/boot/vmlinuz-*`, newest, or
//! `--kernel`), an initramfs holding busybox (static), this very `corral` binary with the
//! shared libraries `ldd` names, the kernel modules a server's disks and NICs need (with
//! their dependencies from `modules.dep`), the answers given here and the token, and an
//! `/init` script; `grub-mkrescue` (xorriso) makes the ISO, bootable by BIOS (and by UEFI
//! when GRUB's EFI files are installed). Nothing is written outside a temporary directory
//! and the output file.

use anyhow::{bail, Context};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `corral p2v media --help`.
pub const MEDIA_HELP: &str = "Make the cold-P2V boot media: an ISO that boots a server into a \
    small Linux in RAM and copies its disk to an agent, never mounting it.\n\n\
    Boot the server from it (CD, USB stick written with dd, or virtual media). On its console \
    a wizard asks for what was not given here: the agent's address, the token and \
    fingerprint, the new VM's name and description, its disk size and network mode; then it \
    copies the disk (one pass: nothing runs from it), the agent converts it to boot on \
    virtio, and the server can be switched off. With everything given here and --unattended \
    nobody needs to be at the console. The answers can also be put on the kernel command \
    line at boot: corral.to=URL corral.fingerprint=FP corral.token=TOKEN corral.name=NAME \
    corral.disk=/dev/sdX corral.network=dhcp|keep corral.disk_size=SIZE.\n\n\
    The media is made from this host: its newest kernel in /boot (or --kernel), that \
    kernel's modules, busybox (package busybox-static), this corral binary, grub-mkrescue \
    (grub-pc-bin, xorriso).\n\n\
    Examples:\n  \
    corral p2v media -o p2v.iso\n  \
    corral p2v media -o p2v.iso --to https://xen01:8443 --token-file t --fingerprint AB:.. \
    --name oldweb --unattended";

#[derive(clap::Args)]
pub struct MediaArgs {
    /// The ISO file to write.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// The agent the server's disk goes to (https://HOST:PORT).
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
    /// File holding the agent's token; it is stored on the media (keep the media safe, or
    /// use a token made for it: `corral token create p2v --role admin --expires 1d`).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Name of the new VM.
    #[arg(long)]
    pub name: Option<String>,
    /// Description of the new VM.
    #[arg(long)]
    pub description: Option<String>,
    /// The VM's disk size (SIZE; default: the server's disk size).
    #[arg(long, value_name = "SIZE")]
    pub disk_size: Option<String>,
    /// dhcp or keep (see `corral p2v --help`).
    #[arg(long, value_name = "dhcp|keep")]
    pub network: Option<String>,
    /// The server's disk to copy (default: the first disk the media finds, sda/vda/nvme0n1).
    #[arg(long, value_name = "DEVICE")]
    pub disk: Option<String>,
    /// Run without asking: every answer must be given (here or on the kernel command line);
    /// the server powers off when the copy is sent.
    #[arg(long)]
    pub unattended: bool,
    /// The kernel to boot (default: the newest /boot/vmlinuz-*); its modules must be in
    /// /lib/modules.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
}

/// Modules a server's disks and NICs may need, loaded when present (absent ones are
/// built in, or not needed).
const MODULES: &[&str] = &[
    "scsi_mod",
    "libata",
    "ahci",
    "ata_piix",
    "sd_mod",
    "nvme",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "tg3",
    "bnx2",
    "r8169",
    "vmxnet3",
    "mptspi",
    "megaraid_sas",
    "hpsa",
    "dm_mod",
];

/// Answers baked into the media (`/etc/corral/answers`, `KEY=VALUE` lines the init reads
/// with `.`): validated here, since a shell reads them.
fn answers(args: &MediaArgs, fingerprint: Option<&str>) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut put = |key: &str, value: Option<&str>| -> anyhow::Result<()> {
        if let Some(v) = value {
            if v.chars().any(|c| c.is_control() || c == '\'') {
                bail!("--{key} {v:?}: control characters and ' are not allowed on the media");
            }
            out.push_str(&format!("{}='{v}'\n", key.to_uppercase().replace('-', "_")));
        }
        Ok(())
    };
    put("to", args.to.as_deref())?;
    put("fingerprint", fingerprint)?;
    if let Some(n) = &args.name {
        corral_model::validate::validate_name("VM", n).map_err(|e| anyhow::anyhow!(e))?;
    }
    put("name", args.name.as_deref())?;
    put("description", args.description.as_deref())?;
    if let Some(s) = &args.disk_size {
        corral_model::parse_size(s).map_err(|e| anyhow::anyhow!("--disk-size {s:?}: {e}"))?;
    }
    put("disk-size", args.disk_size.as_deref())?;
    if let Some(n) = &args.network {
        super::transfer::parse_network(n).map_err(|e| anyhow::anyhow!(e))?;
    }
    put("network", args.network.as_deref())?;
    if let Some(d) = &args.disk {
        if !d.starts_with("/dev/") {
            bail!("--disk {d:?}: name the device, e.g. /dev/sda");
        }
    }
    put("disk", args.disk.as_deref())?;
    if args.unattended {
        out.push_str("UNATTENDED=1\n");
    }
    Ok(out)
}

pub fn run(args: MediaArgs, fingerprint: Option<String>, json: bool) -> anyhow::Result<()> {
    let answers = answers(&args, fingerprint.as_deref())?;
    if args.unattended
        && (args.to.is_none()
            || args.token_file.is_none()
            || fingerprint.is_none()
            || args.name.is_none())
    {
        bail!("--unattended needs --to, --token-file, --fingerprint and --name");
    }
    for tool in ["grub-mkrescue", "xorriso", "cpio", "gzip", "ldd"] {
        if !on_path(tool) {
            bail!("{tool} is not installed (Debian packages grub-pc-bin, grub-common, xorriso, cpio, gzip, libc-bin)");
        }
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("busybox is not installed (Debian package busybox-static)")?;
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => newest_kernel()?,
    };
    let version = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .with_context(|| format!("{}: a kernel is named vmlinuz-VERSION", kernel.display()))?
        .to_string();
    let modules_dir = Path::new("/lib/modules").join(&version);
    if !modules_dir.join("modules.dep").is_file() {
        bail!(
            "{} has no modules.dep: the modules of kernel {version} are not installed",
            modules_dir.display()
        );
    }

    let work = tempfile::Builder::new()
        .prefix("corral-p2v-media-")
        .tempdir()?;
    let root = work.path().join("root");
    for d in ["bin", "etc/corral", "proc", "sys", "dev", "run", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    copy_file(busybox, &root.join("bin/busybox"))?;
    let me = std::env::current_exe().context("cannot find this corral binary")?;
    copy_file(&me, &root.join("bin/corral"))?;
    for lib in shared_libraries(&me)? {
        copy_file(&lib, &root.join(lib.strip_prefix("/").unwrap_or(&lib)))?;
    }
    let loaded = copy_modules(&modules_dir, &version, &root)?;
    std::fs::write(root.join("etc/corral/modules"), loaded.join("\n") + "\n")?;
    std::fs::write(root.join("etc/corral/answers"), &answers)?;
    if let Some(t) = &args.token_file {
        let token = std::fs::read_to_string(t)
            .with_context(|| format!("cannot read the token file {}", t.display()))?;
        write_private(&root.join("etc/corral/token"), token.trim())?;
    }
    write_exec(&root.join("init"), INIT)?;
    write_exec(&root.join("etc/corral/dhcp"), DHCP_SCRIPT)?;

    let iso = work.path().join("iso");
    std::fs::create_dir_all(iso.join("boot/grub"))?;
    copy_file(&kernel, &iso.join("boot/vmlinuz"))?;
    let initrd = std::fs::File::create(iso.join("boot/initrd.gz"))?;
    let st = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1")
        .current_dir(&root)
        .stdout(initrd)
        .status()?;
    if !st.success() {
        bail!("cannot pack the initramfs (cpio | gzip: {st})");
    }
    std::fs::write(iso.join("boot/grub/grub.cfg"), GRUB_CFG)?;
    let out = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&args.output)
        .arg(&iso)
        .output()?;
    if !out.status.success() {
        bail!(
            "grub-mkrescue failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let size = std::fs::metadata(&args.output)?.len();
    if json {
        println!(
            "{}",
            serde_json::json!({"output": args.output, "bytes": size, "kernel": version, "modules": loaded.len(), "unattended": args.unattended})
        );
    } else {
        println!(
            "{}: {} (kernel {version}, {} modules{})",
            args.output.display(),
            corral_model::format_size(size),
            loaded.len(),
            if args.unattended { ", unattended" } else { "" }
        );
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// The newest `/boot/vmlinuz-*` (by version order of the names).
fn newest_kernel() -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .context("cannot read /boot")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    found
        .pop()
        .context("no kernel in /boot (install one, e.g. linux-image-amd64, or give --kernel)")
}

/// The libraries the dynamic loader maps for `binary` (and the loader itself).
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    Ok(text
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Copy the wanted modules of kernel `version` and their dependencies into `root`; the
/// load order (dependencies first), as paths inside the media.
fn copy_modules(dir: &Path, version: &str, root: &Path) -> anyhow::Result<Vec<String>> {
    let dep = std::fs::read_to_string(dir.join("modules.dep"))?;
    let deps: std::collections::HashMap<String, Vec<String>> = dep
        .lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((
                m.to_string(),
                d.split_whitespace().map(str::to_string).collect(),
            ))
        })
        .collect();
    let by_name = |name: &str| {
        deps.keys()
            .find(|k| {
                let base = k.rsplit('/').next().unwrap_or(k);
                let stem = base.split(".ko").next().unwrap_or(base);
                stem.replace('-', "_") == name.replace('-', "_")
            })
            .cloned()
    };
    let mut order: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        m: &str,
        deps: &std::collections::HashMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(m.to_string()) {
            return;
        }
        for d in deps.get(m).into_iter().flatten() {
            visit(d, deps, seen, order);
        }
        order.push(m.to_string());
    }
    for name in MODULES {
        if let Some(m) = by_name(name) {
            visit(&m, &deps, &mut seen, &mut order);
        }
    }
    let mut loaded = Vec::new();
    for m in order {
        let src = dir.join(&m);
        // busybox insmod reads plain modules: a compressed one is unpacked here.
        let (plain, unpack) = match m.rsplit_once(".ko.") {
            Some((stem, "xz")) => (format!("{stem}.ko"), Some("xz")),
            Some((stem, "zst")) => (format!("{stem}.ko"), Some("zstd")),
            Some((stem, "gz")) => (format!("{stem}.ko"), Some("gzip")),
            _ => (m.clone(), None),
        };
        let inside = format!("lib/modules/{version}/{plain}");
        let dest = root.join(&inside);
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p)?;
        }
        match unpack {
            None => copy_file(&src, &dest)?,
            Some(tool) => {
                let out = Command::new(tool).args(["-d", "-c"]).arg(&src).output()?;
                if !out.status.success() {
                    bail!("cannot unpack {} with {tool}", src.display());
                }
                std::fs::write(&dest, out.stdout)?;
            }
        }
        loaded.push(format!("/{inside}"));
    }
    Ok(loaded)
}

fn copy_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(p) = to.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} into the media", from.display()))?;
    Ok(())
}

fn write_exec(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

const GRUB_CFG: &str = "serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=3
menuentry 'corral P2V: copy this server to a VM' {
    linux /boot/vmlinuz console=tty0 console=ttyS0,115200n8 quiet
    initrd /boot/initrd.gz
}
";

/// busybox udhcpc's event script: configure the lease it got.
const DHCP_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
bound|renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" dev "$interface"
	[ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
	echo "corral-p2v: $interface has $ip" ;;
esac
exit 0
"#;

/// The media's init: devices, modules, network, answers, the copy.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /usr/bin /sbin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
exec </dev/console >/dev/console 2>&1
echo "corral-p2v: starting (kernel $(uname -r))"
for m in $(cat /etc/corral/modules); do insmod "$m" 2>/dev/null; done
sleep 2
. /etc/corral/answers
# Kernel command line answers win: corral.to= corral.name= ...
for kv in $(cat /proc/cmdline); do
	case "$kv" in
	corral.*=*) k=${kv#corral.}; v=${k#*=}; k=${k%%=*}
		case "$k" in
		to) TO=$v ;; fingerprint) FINGERPRINT=$v ;; token) echo "$v" > /etc/corral/token ;;
		name) NAME=$v ;; disk) DISK=$v ;; network) NETWORK=$v ;; disk_size) DISK_SIZE=$v ;;
		unattended) UNATTENDED=$v ;;
		esac ;;
	esac
done
ip link set lo up
for n in /sys/class/net/*; do
	i=${n##*/}; [ "$i" = lo ] && continue
	ip link set "$i" up
	udhcpc -i "$i" -s /etc/corral/dhcp -q -n -t 10 >/dev/null 2>&1 && break
done
if [ -z "$DISK" ]; then
	for d in sda vda nvme0n1 hda xvda; do [ -b /dev/$d ] && DISK=/dev/$d && break; done
fi
ask() { # VAR "question"
	eval "cur=\$$1"
	[ -n "$cur" ] && return
	[ "$UNATTENDED" = 1 ] && { echo "corral-p2v: no answer for $1 and --unattended"; return; }
	printf '%s: ' "$2"; read -r v; eval "$1=\$v"
}
ask DISK "the server's disk to copy (e.g. /dev/sda)"
ask TO "the agent (https://HOST:PORT)"
ask FINGERPRINT "the agent's certificate fingerprint"
[ -s /etc/corral/token ] || { ask TOKEN "the agent's token"; [ -n "$TOKEN" ] && echo "$TOKEN" > /etc/corral/token; }
ask NAME "the new VM's name"
[ "$UNATTENDED" = 1 ] || ask DESCRIPTION "its description (empty: one naming this server)"
[ "$UNATTENDED" = 1 ] || ask DISK_SIZE "its disk size (empty: the server's)"
[ "$UNATTENDED" = 1 ] || ask NETWORK "its network: dhcp or keep (empty: dhcp)"
set -- p2v --source-disk "$DISK" --to "$TO" --token-file /etc/corral/token --fingerprint "$FINGERPRINT" --name "$NAME" --no-wait
[ -n "$DESCRIPTION" ] && set -- "$@" --description "$DESCRIPTION"
[ -n "$DISK_SIZE" ] && set -- "$@" --disk-size "$DISK_SIZE"
[ -n "$NETWORK" ] && set -- "$@" --network "$NETWORK"
echo "corral-p2v: copying $DISK to $TO as VM $NAME"
if task=$(/bin/corral "$@"); then
	echo "CORRAL-P2V-SENT task=$task"
	echo "corral-p2v: the disk was sent; the agent converts it (task $task). This server can be switched off."
else
	echo "CORRAL-P2V-FAILED"
fi
if [ "$UNATTENDED" = 1 ]; then sync; poweroff -f; fi
exec sh
"#;
