//! Install-tree detection: given a way to read files of a tree ([`Probe`]), find out which OS
//! installer it holds, where its kernel and initrd are, and which kernel arguments point the
//! installer back at the tree.
//!
//! Detection is a pure function of what the probe answers; the network sits behind the probe
//! (see `crate::fetch`). Layouts are tried in a fixed order (documented in `docs/install.md`):
//!
//! 1. a manual override (`--location URL,kernel=PATH,initrd=PATH`);
//! 2. `.treeinfo`, then `treeinfo` (RHEL family, Fedora, SUSE's newer media, the project's test
//!    installer, any generic treeinfo);
//! 3. SUSE's `content` file with `boot/x86_64/loader/{linux,initrd}`;
//! 4. a Debian/Ubuntu mirror root (`dists/<suite>/Release`, then the netboot images under
//!    `main/installer-amd64/current/{images,legacy-images}/netboot/`);
//! 5. a Debian/Ubuntu installer directory of a mirror (`…/dists/bookworm/main/installer-amd64/`,
//!    recognised by `current/images/MANIFEST` or `current/legacy-images/MANIFEST`, the form
//!    virt-install documents) or a daily-images tree (`…/daily-images/amd64/`, `daily/MANIFEST`);
//! 6. a Debian/Ubuntu `images/` directory (`MANIFEST`), netboot directory (`version.info`) or
//!    `debian-installer/amd64` directory;
//! 7. an exploded Debian or Ubuntu CD (`.disk/info`, `install.amd/` or `casper/`);
//! 8. a Mageia tree (`VERSION`, `isolinux/x86_64/{vmlinuz,all.rdz}`);
//! 9. a RHEL-style tree without treeinfo (`images/pxeboot/`);
//! 10. kernel/initrd paths that osinfo-db names for other OSes.
//!
//! What was found is then named with its osinfo-db short id ([`osid`]), as virt-install does.
//!
//! A probe that fails with something other than "not found" (unreachable host, timeout,
//! permission denied) stops detection at once: trying twenty more paths against a dead host
//! helps nobody. Either way the error lists every probe made and what it returned.

mod args;
mod osid;
mod parse;

pub use args::{installer_args, unattended_initrd_name, Unattended};
pub use osid::{identify, KnownOs, OsNames};
pub use parse::{parse_ini, parse_rfc822, Ini};

use crate::templates::{InstallMethod, OsFamily};
use crate::url::{clean_relative, Scheme, SourceUrl};
use serde::Serialize;
use std::cell::RefCell;
use std::fmt;

/// Largest file a probe returns in full; longer files are cut (enough for any treeinfo,
/// Release or content file; kernels are only checked for existence).
pub const PROBE_CAP_BYTES: usize = 1 << 20;

/// What reading one path of a tree gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// The file's first bytes (at most [`PROBE_CAP_BYTES`]); empty from [`Probe::exists`].
    Found(Vec<u8>),
    /// The server says there is no such file (the text is what it said: `404 Not Found`).
    NotFound(String),
    /// Anything else: unreachable, timeout, permission denied, protocol error.
    Error(String),
}

/// Read access to one install tree. Paths are relative to the tree's root, `/`-separated.
pub trait Probe {
    /// The beginning of a file (up to [`PROBE_CAP_BYTES`]).
    fn fetch(&self, relative_path: &str) -> ProbeResult;
    /// Whether a file exists; `Found` carries no bytes. The default reads the file.
    fn exists(&self, relative_path: &str) -> ProbeResult {
        match self.fetch(relative_path) {
            ProbeResult::Found(_) => ProbeResult::Found(Vec::new()),
            other => other,
        }
    }
    /// How the request for `relative_path` appears in messages: `GET http://h/d/.treeinfo`.
    fn describe(&self, relative_path: &str) -> String;
}

/// One probe made during detection and its outcome, for messages and task logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeRecord {
    pub request: String,
    pub outcome: String,
}

impl fmt::Display for ProbeRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} → {}", self.request, self.outcome)
    }
}

/// `; tried: A → 404; B → found`, or nothing when no probe was made.
fn tried(r: &[ProbeRecord]) -> String {
    if r.is_empty() {
        return String::new();
    }
    let list: Vec<String> = r.iter().map(ProbeRecord::to_string).collect();
    format!("; tried: {}", list.join("; "))
}

/// Why detection failed. Every variant carries the probes made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DetectError {
    #[error("no installable tree found at {location}{}", tried(probes))]
    NoInstallableTree {
        location: String,
        probes: Vec<ProbeRecord>,
    },
    #[error(
        "cannot read install tree at {location}: {request}: {error}{}",
        tried(probes)
    )]
    ProbeFailed {
        location: String,
        request: String,
        error: String,
        probes: Vec<ProbeRecord>,
    },
    #[error("install tree at {location}: {message}{}", tried(probes))]
    Invalid {
        location: String,
        message: String,
        probes: Vec<ProbeRecord>,
    },
}

impl DetectError {
    pub fn probes(&self) -> &[ProbeRecord] {
        match self {
            DetectError::NoInstallableTree { probes, .. }
            | DetectError::ProbeFailed { probes, .. }
            | DetectError::Invalid { probes, .. } => probes,
        }
    }
    pub fn kind(&self) -> corral_model::ErrorKind {
        match self {
            DetectError::NoInstallableTree { .. } => corral_model::ErrorKind::NotFound,
            DetectError::ProbeFailed { .. } => corral_model::ErrorKind::Unsupported,
            DetectError::Invalid { .. } => corral_model::ErrorKind::InvalidInput,
        }
    }
}

/// Which layout matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    Manual,
    Treeinfo,
    SuseContent,
    DebianMirror,
    /// `…/dists/<suite>/main/installer-amd64/` of a mirror.
    DebianInstallerDir,
    /// `…/daily-images/amd64/` (d-i's daily builds).
    DebianDaily,
    DebianImages,
    DebianNetboot,
    DebianMedia,
    UbuntuCasper,
    Mageia,
    Pxeboot,
    Osinfo,
}

impl Layout {
    /// The name used in messages and the JSON plan (`debian-installer-dir`).
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Manual => "manual",
            Layout::Treeinfo => "treeinfo",
            Layout::SuseContent => "suse-content",
            Layout::DebianMirror => "debian-mirror",
            Layout::DebianInstallerDir => "debian-installer-dir",
            Layout::DebianDaily => "debian-daily",
            Layout::DebianImages => "debian-images",
            Layout::DebianNetboot => "debian-netboot",
            Layout::DebianMedia => "debian-media",
            Layout::UbuntuCasper => "ubuntu-casper",
            Layout::Mageia => "mageia",
            Layout::Pxeboot => "pxeboot",
            Layout::Osinfo => "osinfo",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operating system a tree holds, as far as its files say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DetectedOs {
    pub family: OsFamily,
    /// The distribution's own name: `Debian`, `Red Hat Enterprise Linux`, `openSUSE Leap`.
    pub name: String,
    /// `BaseOS`, `Server`, `netinst`; empty when unknown.
    pub variant: String,
    /// `12`, `9.2`, `15.5`; empty when unknown.
    pub version: String,
    /// The Debian/Ubuntu suite (`bookworm`), when known.
    pub codename: Option<String>,
    pub arch: Option<String>,
    /// The osinfo-db short id of the release (`debian10`, `opensuse42.3`), when osinfo-db or
    /// a template knows it (see [`identify`]).
    pub osinfo_id: Option<String>,
}

/// A detected install tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detected {
    pub os: DetectedOs,
    pub layout: Layout,
    /// Kernel and initrd, relative to the tree root.
    pub kernel_path: String,
    pub initrd_path: String,
    /// Kernel arguments that point the installer at the tree (and the unattended file).
    pub installer_args: String,
    pub method: InstallMethod,
    /// Every probe made, in order.
    pub probes: Vec<ProbeRecord>,
    /// Things the user should know (e.g. an installer that cannot use this protocol).
    pub notes: Vec<String>,
}

/// Inputs to detection besides the probe.
#[derive(Debug, Clone, Default)]
pub struct DetectOptions {
    /// `kernel=` and `initrd=` from `--location`.
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    /// The template's OS family: used for the override's arguments and to try its layouts first.
    pub family_hint: Option<OsFamily>,
    /// Suites to try first on a Debian/Ubuntu mirror (the template's codename).
    pub suite_hints: Vec<String>,
    /// The tree's URL as the guest sees it, when it differs from the agent's (QEMU user
    /// networking shows the host's 127.0.0.1 as 10.0.2.2).
    pub guest_url: Option<SourceUrl>,
    /// Where the installer finds the unattended file.
    pub unattended: Unattended,
    /// Extra kernel/initrd pairs to try last (e.g. `Catalog::osinfo_kernel_paths`).
    pub extra_kernel_paths: Vec<(String, String)>,
    /// The osinfo ids detection may name the release with (`Catalog::os_names`); empty: none.
    pub os_names: OsNames,
}

/// Suites tried on a mirror root when no hint matches, newest first.
pub const KNOWN_SUITES: &[&str] = &["bookworm", "bullseye", "trixie", "noble", "jammy", "focal"];

struct Session<'a> {
    probe: &'a dyn Probe,
    location: String,
    /// The tree URL's path (`/debian/dists/bookworm/main/installer-amd64/`): layouts that do
    /// not name their release in their files are named by it.
    url_path: String,
    records: RefCell<Vec<ProbeRecord>>,
}

/// Probes either answer (found / not found) or fail, which aborts detection.
type Step<T> = Result<T, DetectError>;

impl Session<'_> {
    fn record(&self, request: String, outcome: String) {
        self.records
            .borrow_mut()
            .push(ProbeRecord { request, outcome });
    }

    fn fail(&self, path: &str, error: String) -> DetectError {
        DetectError::ProbeFailed {
            location: self.location.clone(),
            request: self.probe.describe(path),
            error,
            probes: self.records.borrow().clone(),
        }
    }

    /// Read a small file: `Some(text)` when found, `None` when not found.
    fn read(&self, path: &str) -> Step<Option<String>> {
        match self.probe.fetch(path) {
            ProbeResult::Found(bytes) => {
                self.record(
                    self.probe.describe(path),
                    format!("found ({} bytes)", bytes.len()),
                );
                Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
            }
            ProbeResult::NotFound(why) => {
                self.record(self.probe.describe(path), why);
                Ok(None)
            }
            ProbeResult::Error(e) => {
                self.record(self.probe.describe(path), format!("error: {e}"));
                Err(self.fail(path, e))
            }
        }
    }

    fn exists(&self, path: &str) -> Step<bool> {
        match self.probe.exists(path) {
            ProbeResult::Found(_) => {
                self.record(self.probe.describe(path), "found".into());
                Ok(true)
            }
            ProbeResult::NotFound(why) => {
                self.record(self.probe.describe(path), why);
                Ok(false)
            }
            ProbeResult::Error(e) => {
                self.record(self.probe.describe(path), format!("error: {e}"));
                Err(self.fail(path, e))
            }
        }
    }

    /// Both kernel and initrd exist (the initrd is only probed when the kernel is there).
    fn pair(&self, kernel: &str, initrd: &str) -> Step<bool> {
        Ok(self.exists(kernel)? && self.exists(initrd)?)
    }

    fn invalid(&self, message: String) -> DetectError {
        DetectError::Invalid {
            location: self.location.clone(),
            message,
            probes: self.records.borrow().clone(),
        }
    }
}

/// What a layout found, before arguments are computed.
struct Found {
    os: DetectedOs,
    layout: Layout,
    kernel: String,
    initrd: String,
    /// Directory (relative to the tree) that is the Debian/Ubuntu mirror root, when known.
    mirror_root: Option<String>,
    /// `[corral] installer_args` or similar tree-provided extra arguments.
    tree_args: Option<String>,
}

fn method_of(scheme: Scheme) -> InstallMethod {
    match scheme {
        Scheme::Http | Scheme::Https => InstallMethod::Http,
        Scheme::Ftp => InstallMethod::Ftp,
        Scheme::Nfs => InstallMethod::Nfs,
        Scheme::File => InstallMethod::Cdrom,
    }
}

/// Detect the install tree at `url`, reading it through `probe`.
pub fn detect(
    probe: &dyn Probe,
    url: &SourceUrl,
    opts: &DetectOptions,
) -> Result<Detected, DetectError> {
    let s = Session {
        probe,
        location: url.to_string(),
        url_path: url.as_dir().path,
        records: RefCell::new(Vec::new()),
    };
    let mut found = find(&s, opts)?;
    found.os.osinfo_id = identify(&found.os, found.layout, url, &opts.os_names);
    let guest = opts
        .guest_url
        .clone()
        .unwrap_or_else(|| url.clone())
        .as_dir();
    let method = method_of(guest.scheme);
    let mut notes = Vec::new();
    let mut args = if found.layout == Layout::Mageia {
        args::mageia_args(&guest, &mut notes)
    } else {
        installer_args(
            found.os.family,
            &guest,
            found.mirror_root.as_deref(),
            found.os.codename.as_deref(),
            &opts.unattended,
            &mut notes,
        )
    };
    if let Some(extra) = found.tree_args.filter(|a| !a.trim().is_empty()) {
        args = format!("{args} {}", extra.trim()).trim().to_string();
    }
    Ok(Detected {
        os: found.os,
        layout: found.layout,
        kernel_path: found.kernel,
        initrd_path: found.initrd,
        installer_args: args,
        method,
        probes: s.records.into_inner(),
        notes,
    })
}

fn unknown_os(family: OsFamily, name: &str) -> DetectedOs {
    DetectedOs {
        family,
        name: name.to_string(),
        variant: String::new(),
        version: String::new(),
        codename: None,
        arch: None,
        osinfo_id: None,
    }
}

fn find(s: &Session<'_>, opts: &DetectOptions) -> Step<Found> {
    if let Some(kernel) = &opts.kernel {
        return manual(s, opts, kernel);
    }
    if let Some(f) = treeinfo(s)? {
        return Ok(f);
    }
    let debian_first = matches!(opts.family_hint, Some(OsFamily::Debian | OsFamily::Ubuntu));
    if debian_first {
        if let Some(f) = debian_any(s, opts)? {
            return Ok(f);
        }
    }
    if let Some(f) = suse(s)? {
        return Ok(f);
    }
    if !debian_first {
        if let Some(f) = debian_any(s, opts)? {
            return Ok(f);
        }
    }
    if let Some(f) = mageia(s)? {
        return Ok(f);
    }
    if s.pair("images/pxeboot/vmlinuz", "images/pxeboot/initrd.img")? {
        return Ok(Found {
            os: unknown_os(OsFamily::Rhel, "Red Hat family"),
            layout: Layout::Pxeboot,
            kernel: "images/pxeboot/vmlinuz".into(),
            initrd: "images/pxeboot/initrd.img".into(),
            mirror_root: None,
            tree_args: None,
        });
    }
    for (k, i) in &opts.extra_kernel_paths {
        let (Ok(k), Ok(i)) = (clean_relative(k), clean_relative(i)) else {
            continue;
        };
        if k == "images/pxeboot/vmlinuz"
            || k.contains("installer-amd64")
            || k.contains("debian-installer/amd64")
        {
            continue; // already tried above
        }
        if s.pair(&k, &i)? {
            return Ok(Found {
                os: unknown_os(opts.family_hint.unwrap_or(OsFamily::Linux), "unknown"),
                layout: Layout::Osinfo,
                kernel: k,
                initrd: i,
                mirror_root: None,
                tree_args: None,
            });
        }
    }
    Err(DetectError::NoInstallableTree {
        location: s.location.clone(),
        probes: s.records.borrow().clone(),
    })
}

fn manual(s: &Session<'_>, opts: &DetectOptions, kernel: &str) -> Step<Found> {
    let kernel = clean_relative(kernel).map_err(|e| s.invalid(format!("kernel={kernel}: {e}")))?;
    let initrd = match &opts.initrd {
        Some(i) => Some(clean_relative(i).map_err(|e| s.invalid(format!("initrd={i}: {e}")))?),
        None => None,
    };
    if !s.exists(&kernel)? {
        return Err(s.invalid(format!("kernel {kernel:?} not found in the tree")));
    }
    if let Some(i) = &initrd {
        if !s.exists(i)? {
            return Err(s.invalid(format!("initrd {i:?} not found in the tree")));
        }
    }
    // The tree may still say what it is; use that when it does, the template otherwise.
    let mut os = unknown_os(opts.family_hint.unwrap_or(OsFamily::Linux), "manual");
    for name in [".treeinfo", "treeinfo"] {
        if let Some(text) = s.read(name)? {
            let ini = parse_ini(&text);
            os = treeinfo_os(&ini);
            break;
        }
    }
    Ok(Found {
        os,
        layout: Layout::Manual,
        kernel,
        initrd: initrd.unwrap_or_default(),
        mirror_root: None,
        tree_args: None,
    })
}

/// Map a treeinfo `family` to an installer family.
pub fn family_of_treeinfo(family: &str) -> OsFamily {
    let f = family.to_ascii_lowercase();
    if f == "corral-test-installer" || f.starts_with("corral") {
        OsFamily::CorralTest
    } else if [
        "red hat",
        "rhel",
        "centos",
        "fedora",
        "almalinux",
        "rocky",
        "oracle",
        "scientific",
        "circle",
        "eurolinux",
    ]
    .iter()
    .any(|k| f.contains(k))
    {
        OsFamily::Rhel
    } else if f.contains("suse") || f.contains("sles") {
        OsFamily::Suse
    } else if f.contains("debian") {
        OsFamily::Debian
    } else if f.contains("ubuntu") {
        OsFamily::Ubuntu
    } else {
        OsFamily::Linux
    }
}

fn treeinfo_os(ini: &Ini) -> DetectedOs {
    // productmd (.treeinfo 1.x) puts the name in [release], older files in [general].
    let get = |keys: &[(&str, &str)]| {
        keys.iter()
            .find_map(|(sec, key)| ini.get(sec, key))
            .unwrap_or_default()
            .to_string()
    };
    let name = get(&[
        ("general", "family"),
        ("release", "name"),
        ("product", "name"),
    ]);
    let version = get(&[
        ("general", "version"),
        ("release", "version"),
        ("product", "version"),
    ]);
    let variant = get(&[
        ("general", "variant"),
        ("variant-BaseOS", "name"),
        ("tree", "variants"),
    ]);
    let arch = get(&[("general", "arch"), ("tree", "arch")]);
    DetectedOs {
        family: family_of_treeinfo(&name),
        name,
        variant,
        version,
        codename: None,
        arch: (!arch.is_empty()).then_some(arch),
        osinfo_id: None,
    }
}

fn treeinfo(s: &Session<'_>) -> Step<Option<Found>> {
    let mut text = None;
    for name in [".treeinfo", "treeinfo"] {
        if let Some(t) = s.read(name)? {
            text = Some(t);
            break;
        }
    }
    let Some(text) = text else {
        return Ok(None);
    };
    let ini = parse_ini(&text);
    let os = treeinfo_os(&ini);
    if let Some(arch) = &os.arch {
        if !matches!(arch.as_str(), "x86_64" | "amd64" | "noarch") {
            return Err(s.invalid(format!(
                "the tree is for {arch}; corral installs x86_64 guests"
            )));
        }
    }
    let mut candidates: Vec<(String, String)> = Vec::new();
    for sec in ["images-x86_64", "images-xen", "images-all"] {
        if let Some(k) = ini.get(sec, "kernel") {
            let i = ini.get(sec, "initrd").unwrap_or_default();
            candidates.push((k.to_string(), i.to_string()));
        }
    }
    candidates.push((
        "images/pxeboot/vmlinuz".into(),
        "images/pxeboot/initrd.img".into(),
    ));
    if os.family == OsFamily::Suse {
        candidates.push((
            "boot/x86_64/loader/linux".into(),
            "boot/x86_64/loader/initrd".into(),
        ));
    }
    let mut tried = std::collections::HashSet::new();
    for (k, i) in candidates {
        let k = clean_relative(&k).map_err(|e| s.invalid(format!("treeinfo kernel path: {e}")))?;
        let i = clean_relative(&i).map_err(|e| s.invalid(format!("treeinfo initrd path: {e}")))?;
        if !tried.insert((k.clone(), i.clone())) {
            continue;
        }
        if s.pair(&k, &i)? {
            // Extra arguments the tree asks for: `[corral] installer_args`, or `[general]
            // kernel_args` as the project's test installer writes it.
            let tree_args = ini
                .get("corral", "installer_args")
                .or_else(|| ini.get("general", "kernel_args"))
                .map(str::to_string);
            return Ok(Some(Found {
                os,
                layout: Layout::Treeinfo,
                kernel: k,
                initrd: i,
                mirror_root: None,
                tree_args,
            }));
        }
    }
    Err(s.invalid(format!(
        "its treeinfo ({} {}) names no kernel and initrd that exist",
        if os.name.is_empty() {
            "unknown family"
        } else {
            &os.name
        },
        os.version
    )))
}

fn suse(s: &Session<'_>) -> Step<Option<Found>> {
    let Some(text) = s.read("content")? else {
        return Ok(None);
    };
    let fields = parse::parse_suse_content(&text);
    // Product name: LABEL (`SUSE Linux Enterprise Server 10 SP4`, `openSUSE 11.4`), or since
    // 2018 only the text after the CPE in DISTRO (`cpe:/o:opensuse:leap:42.3,openSUSE Leap 42.3`).
    let name = fields
        .get("LABEL")
        .or_else(|| fields.get("PRODUCT"))
        .or_else(|| fields.get("NAME"))
        .cloned()
        .or_else(|| {
            fields
                .get("DISTRO")
                .and_then(|d| d.split_once(',').map(|(_, n)| n.trim().to_string()))
        })
        .unwrap_or_else(|| "SUSE".into());
    // VERSION `10.4-0` on SLES 10 media; newer trees only have the CPE's last field.
    let version = fields
        .get("VERSION")
        .map(|v| v.split('-').next().unwrap_or_default().trim().to_string())
        .filter(|v| !v.is_empty())
        .or_else(|| {
            fields
                .get("DISTRO")
                .and_then(|d| d.split(',').next()?.rsplit(':').next().map(str::to_string))
        })
        .unwrap_or_default();
    // The tree's architecture: BASEARCHS (`i586 x86_64`), DEFAULTBASE, or REPOID's last
    // component (`…/DVD/x86_64`, `…/ftp/i586-x86_64` on 13.2).
    let arch = fields
        .get("BASEARCHS")
        .or_else(|| fields.get("DEFAULTBASE"))
        .cloned()
        .or_else(|| {
            fields
                .get("REPOID")
                .and_then(|r| r.rsplit('/').next().map(str::to_string))
        });
    if let Some(arch) = &arch {
        if !arch.split([' ', '-']).any(|a| a == "x86_64") {
            return Err(s.invalid(format!(
                "its SUSE content file says the tree is for {arch}; corral installs x86_64 guests"
            )));
        }
    }
    // linuxrc's kernel moved over the years: boot/x86_64/loader/ (openSUSE ≥ 10.2, SLES 10,
    // 11 and later), boot/x86_64/ (SLES 12 on other arches, kept for completeness) and
    // boot/loader/linux64 (openSUSE 10.0).
    for (k, i) in [
        ("boot/x86_64/loader/linux", "boot/x86_64/loader/initrd"),
        ("boot/x86_64/linux", "boot/x86_64/initrd"),
        ("boot/loader/linux64", "boot/loader/initrd64"),
    ] {
        if s.pair(k, i)? {
            return Ok(Some(Found {
                os: DetectedOs {
                    family: OsFamily::Suse,
                    name,
                    variant: String::new(),
                    version,
                    codename: None,
                    arch: Some("x86_64".into()),
                    osinfo_id: None,
                },
                layout: Layout::SuseContent,
                kernel: k.into(),
                initrd: i.into(),
                mirror_root: None,
                tree_args: None,
            }));
        }
    }
    Err(s.invalid(
        "its SUSE content file is there but boot/x86_64/loader/linux and initrd are not".into(),
    ))
}

/// A Mageia tree (`…/distrib/5/x86_64/`): its `VERSION` file says `Mageia 5 …`, drakx's
/// kernel and initrd are under `isolinux/x86_64/`.
fn mageia(s: &Session<'_>) -> Step<Option<Found>> {
    let Some(text) = s.read("VERSION")? else {
        return Ok(None);
    };
    let line = text.lines().next().unwrap_or_default().trim();
    let mut words = line.split_whitespace();
    if words.next() != Some("Mageia") {
        return Ok(None); // some other product's VERSION file
    }
    let version = words
        .next()
        .filter(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .unwrap_or_default()
        .to_string();
    let (k, i) = ("isolinux/x86_64/vmlinuz", "isolinux/x86_64/all.rdz");
    if !s.pair(k, i)? {
        return Err(s.invalid(format!(
            "its VERSION file says {line:?} but {k} and {i} are not there (corral installs x86_64 guests)"
        )));
    }
    Ok(Some(Found {
        os: DetectedOs {
            family: OsFamily::Linux,
            name: "Mageia".into(),
            variant: String::new(),
            version,
            codename: None,
            arch: Some("x86_64".into()),
            osinfo_id: None,
        },
        layout: Layout::Mageia,
        kernel: k.into(),
        initrd: i.into(),
        mirror_root: None,
        tree_args: None,
    }))
}

/// Netboot kernel/initrd locations below a `main/installer-amd64/current/` directory.
const NETBOOT_SUBDIRS: &[(&str, OsFamily)] = &[
    ("images/netboot/debian-installer/amd64/", OsFamily::Debian),
    ("images/netboot/ubuntu-installer/amd64/", OsFamily::Debian),
    (
        "legacy-images/netboot/ubuntu-installer/amd64/",
        OsFamily::Debian,
    ),
];

fn debian_any(s: &Session<'_>, opts: &DetectOptions) -> Step<Option<Found>> {
    if let Some(f) = debian_mirror(s, opts)? {
        return Ok(Some(f));
    }
    if let Some(f) = debian_installer_dir(s)? {
        return Ok(Some(f));
    }
    if let Some(f) = debian_partial(s)? {
        return Ok(Some(f));
    }
    debian_media(s)
}

fn debian_mirror(s: &Session<'_>, opts: &DetectOptions) -> Step<Option<Found>> {
    let mut suites: Vec<String> = opts.suite_hints.clone();
    for k in KNOWN_SUITES {
        if !suites.iter().any(|x| x == k) {
            suites.push((*k).to_string());
        }
    }
    for suite in suites {
        if suite.is_empty() || suite.contains('/') || suite.contains("..") {
            continue;
        }
        let Some(release) = s.read(&format!("dists/{suite}/Release"))? else {
            continue;
        };
        let fields = parse_rfc822(&release);
        let origin = fields
            .get("Origin")
            .cloned()
            .unwrap_or_else(|| "Debian".into());
        let codename = fields
            .get("Codename")
            .cloned()
            .unwrap_or_else(|| suite.clone());
        let version = fields.get("Version").cloned().unwrap_or_default();
        let base = format!("dists/{suite}/main/installer-amd64/current/");
        for (sub, family) in NETBOOT_SUBDIRS {
            let k = format!("{base}{sub}linux");
            let i = format!("{base}{sub}initrd.gz");
            if s.pair(&k, &i)? {
                return Ok(Some(Found {
                    os: DetectedOs {
                        family: *family,
                        name: origin,
                        variant: "netboot".into(),
                        version,
                        codename: Some(codename),
                        arch: Some("amd64".into()),
                        osinfo_id: None,
                    },
                    layout: Layout::DebianMirror,
                    kernel: k,
                    initrd: i,
                    mirror_root: Some(String::new()),
                    tree_args: None,
                }));
            }
        }
        return Err(s.invalid(format!(
            "it is a {origin} mirror with suite {suite}, but dists/{suite}/main/installer-amd64/current has no netboot installer for amd64"
        )));
    }
    Ok(None)
}

/// The segment after `marker` in a URL path: `installer-amd64` → `amd64`, `dists/x/` → `x`.
fn path_segment_after<'p>(path: &'p str, marker: &str) -> Option<&'p str> {
    let mut segments = path.split('/').filter(|p| !p.is_empty());
    if let Some(prefix) = marker.strip_suffix('/') {
        segments.by_ref().find(|p| *p == prefix)?;
        return segments.next();
    }
    segments.find_map(|p| p.strip_prefix(marker))
}

/// Does this MANIFEST describe Ubuntu's d-i images (rather than Debian's)?
fn manifest_is_ubuntu(text: &str) -> bool {
    text.contains("ubuntu") || text.contains("Ubuntu")
}

/// The installer directory of a mirror, `…/dists/<suite>/main/installer-<arch>/` (what
/// virt-install's documentation gives as `--location`), or d-i's daily images,
/// `…/daily-images/<arch>/`. Neither says its release in its files: the suite comes from
/// the URL, as virt-install takes it.
fn debian_installer_dir(s: &Session<'_>) -> Step<Option<Found>> {
    let path = s.url_path.clone();
    // (manifest, images directory, layout)
    let kinds = [
        (
            "current/images/MANIFEST",
            "current/images/",
            Layout::DebianInstallerDir,
        ),
        (
            "current/legacy-images/MANIFEST",
            "current/legacy-images/",
            Layout::DebianInstallerDir,
        ),
        ("daily/MANIFEST", "daily/", Layout::DebianDaily),
    ];
    for (manifest, images, layout) in kinds {
        let Some(text) = s.read(manifest)? else {
            continue;
        };
        let arch = match layout {
            Layout::DebianDaily => path_segment_after(&path, "daily-images/"),
            _ => path_segment_after(&path, "installer-"),
        }
        .unwrap_or("amd64")
        .to_string();
        if arch != "amd64" {
            return Err(s.invalid(format!(
                "it is a Debian installer directory for {arch}; corral installs amd64 (x86_64) guests"
            )));
        }
        let ubuntu = manifest_is_ubuntu(&text);
        let order: [(&str, OsFamily); 2] = if ubuntu {
            [("ubuntu", OsFamily::Debian), ("debian", OsFamily::Debian)]
        } else {
            [("debian", OsFamily::Debian), ("ubuntu", OsFamily::Debian)]
        };
        for (which, family) in order {
            let dir = format!("{images}netboot/{which}-installer/amd64/");
            let (k, i) = (format!("{dir}linux"), format!("{dir}initrd.gz"));
            if !s.pair(&k, &i)? {
                continue;
            }
            let suite = (layout == Layout::DebianInstallerDir)
                .then(|| path_segment_after(&path, "dists/"))
                .flatten()
                .map(str::to_ascii_lowercase);
            // `netboot/version.info` names the release when the mirror has it.
            let info = s.read(&format!("{images}netboot/version.info"))?;
            let mut os = info.as_deref().map_or_else(
                || {
                    unknown_os(
                        family,
                        if which == "ubuntu" {
                            "Ubuntu"
                        } else {
                            "Debian"
                        },
                    )
                },
                |t| os_from_version_info(t, family),
            );
            if which == "ubuntu" {
                os.name = "Ubuntu".into();
            }
            os.variant = if layout == Layout::DebianDaily {
                "daily".into()
            } else {
                "netboot".into()
            };
            os.arch = Some("amd64".into());
            if let Some(suite) = &suite {
                os.codename = Some(suite.clone());
            }
            // The mirror root is four levels up (`dists/<suite>/main/installer-amd64/`),
            // so debian-installer gets the mirror and suite without asking.
            let mirror_root = suite.is_some().then(|| "../../../../".to_string());
            return Ok(Some(Found {
                os,
                layout,
                kernel: k,
                initrd: i,
                mirror_root,
                tree_args: None,
            }));
        }
        return Err(s.invalid(format!(
            "its {manifest} is there but {images}netboot/{{debian,ubuntu}}-installer/amd64/linux and initrd.gz are not"
        )));
    }
    Ok(None)
}

/// The OS a netboot `version.info` names: `Debian version:  12 (bookworm)`.
fn os_from_version_info(text: &str, family: OsFamily) -> DetectedOs {
    let mut os = unknown_os(family, "Debian");
    if let Some(line) = text.lines().find(|l| l.contains("version:")) {
        let v = line.split_once(':').map(|x| x.1.trim()).unwrap_or_default();
        let (num, code) = match v.split_once('(') {
            Some((n, c)) => (n.trim(), Some(c.trim_end_matches(')').trim().to_string())),
            None => (v, None),
        };
        os.version = num.to_string();
        os.codename = code;
        if line.to_ascii_lowercase().starts_with("ubuntu") {
            os.name = "Ubuntu".into();
        }
    }
    os.variant = "netboot".into();
    os
}

/// A location inside a mirror: the `images/` directory, the netboot directory, or
/// `debian-installer/amd64` itself.
fn debian_partial(s: &Session<'_>) -> Step<Option<Found>> {
    // images/ directory: MANIFEST lists what the images are.
    if let Some(manifest) = s.read("MANIFEST")? {
        for (sub, _) in NETBOOT_SUBDIRS {
            let Some(sub) = sub.strip_prefix("images/") else {
                continue;
            };
            let k = format!("{sub}linux");
            if !manifest.contains(&k) {
                continue;
            }
            let i = format!("{sub}initrd.gz");
            if s.pair(&k, &i)? {
                let info = s.read("netboot/version.info")?;
                let os = info.as_deref().map_or_else(
                    || unknown_os(OsFamily::Debian, "Debian"),
                    |t| os_from_version_info(t, OsFamily::Debian),
                );
                return Ok(Some(Found {
                    os,
                    layout: Layout::DebianImages,
                    kernel: k,
                    initrd: i,
                    mirror_root: None,
                    tree_args: None,
                }));
            }
        }
    }
    // The netboot directory (what debian-installer-*-netboot-amd64 ships).
    if let Some(info) = s.read("version.info")? {
        for sub in ["debian-installer/amd64/", "ubuntu-installer/amd64/"] {
            let (k, i) = (format!("{sub}linux"), format!("{sub}initrd.gz"));
            if s.pair(&k, &i)? {
                return Ok(Some(Found {
                    os: os_from_version_info(&info, OsFamily::Debian),
                    layout: Layout::DebianNetboot,
                    kernel: k,
                    initrd: i,
                    mirror_root: None,
                    tree_args: None,
                }));
            }
        }
    }
    Ok(None)
}

fn debian_media(s: &Session<'_>) -> Step<Option<Found>> {
    let Some(info) = s.read(".disk/info")? else {
        return Ok(None);
    };
    // "Debian GNU/Linux 12.5.0 "Bookworm" - Official amd64 NETINST with firmware 20240210-11:27"
    // "Ubuntu-Server 22.04.3 LTS "Jammy Jellyfish" - Release amd64 (20230810)"
    let info = info.lines().next().unwrap_or_default().trim().to_string();
    let ubuntu = info.to_ascii_lowercase().starts_with("ubuntu");
    let version = info
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .unwrap_or_default()
        .to_string();
    let codename = info
        .split('"')
        .nth(1)
        .and_then(|c| c.split_whitespace().next())
        .map(str::to_ascii_lowercase);
    let name = info
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let os = |family| DetectedOs {
        family,
        name: name.clone(),
        variant: "media".into(),
        version: version.clone(),
        codename: codename.clone(),
        arch: Some("amd64".into()),
        osinfo_id: None,
    };
    for (k, i) in [
        ("install.amd/vmlinuz", "install.amd/initrd.gz"),
        ("install/vmlinuz", "install/initrd.gz"),
        // An ISO exported over the network: the netboot installer, which needs no CD drive
        // (virt-install's "mounted_iso_url").
        (
            "install/netboot/debian-installer/amd64/linux",
            "install/netboot/debian-installer/amd64/initrd.gz",
        ),
        (
            "install/netboot/ubuntu-installer/amd64/linux",
            "install/netboot/ubuntu-installer/amd64/initrd.gz",
        ),
    ] {
        if s.pair(k, i)? {
            return Ok(Some(Found {
                os: os(OsFamily::Debian),
                layout: Layout::DebianMedia,
                kernel: k.into(),
                initrd: i.into(),
                mirror_root: None,
                tree_args: None,
            }));
        }
    }
    if ubuntu && s.pair("casper/vmlinuz", "casper/initrd")? {
        return Ok(Some(Found {
            os: os(OsFamily::Ubuntu),
            layout: Layout::UbuntuCasper,
            kernel: "casper/vmlinuz".into(),
            initrd: "casper/initrd".into(),
            mirror_root: None,
            tree_args: None,
        }));
    }
    Err(s.invalid(format!(
        "its .disk/info says {info:?} but no installer kernel and initrd were found"
    )))
}

#[cfg(test)]
mod tests;
