//! Detection table tests: one fixture directory per layout under `tests/fixtures/trees/`,
//! read through a probe that answers like an HTTP server at a fixed URL.

use super::*;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/trees")
        .join(name)
}

/// Serves a fixture directory as if it were `base` on an HTTP server.
struct FixtureProbe {
    root: PathBuf,
    base: String,
}

impl Probe for FixtureProbe {
    fn fetch(&self, rel: &str) -> ProbeResult {
        match std::fs::read(self.root.join(rel)) {
            Ok(mut b) => {
                b.truncate(PROBE_CAP_BYTES);
                ProbeResult::Found(b)
            }
            Err(_) => ProbeResult::NotFound("404 Not Found".into()),
        }
    }
    fn describe(&self, rel: &str) -> String {
        format!("GET {}{rel}", self.base)
    }
}

/// Fails every request the way an unreachable host does.
struct DeadProbe;

impl Probe for DeadProbe {
    fn fetch(&self, _: &str) -> ProbeResult {
        ProbeResult::Error("connection refused".into())
    }
    fn describe(&self, rel: &str) -> String {
        format!("GET http://10.9.9.9/{rel}")
    }
}

/// The ids of the built-in templates and of this host's osinfo-db (Debian's `osinfo-db`, a
/// test dependency), loaded once.
fn os_names() -> OsNames {
    static NAMES: std::sync::OnceLock<OsNames> = std::sync::OnceLock::new();
    NAMES
        .get_or_init(|| crate::Catalog::load(None).expect("catalog").os_names())
        .clone()
}

fn run(name: &str, url: &str, opts: &DetectOptions) -> Result<Detected, DetectError> {
    let url = SourceUrl::parse(url).expect("url");
    let mut opts = opts.clone();
    if opts.os_names.is_empty() {
        opts.os_names = os_names();
    }
    let opts = &opts;
    let probe = FixtureProbe {
        root: fixture(name),
        base: url.as_dir().to_string(),
    };
    detect(&probe, &url, opts)
}

struct Case {
    fixture: &'static str,
    url: &'static str,
    opts: DetectOptions,
    family: OsFamily,
    layout: Layout,
    name: &'static str,
    version: &'static str,
    codename: Option<&'static str>,
    kernel: &'static str,
    initrd: &'static str,
    args: &'static str,
    method: InstallMethod,
    /// The osinfo-db short id detection names the release with.
    osinfo: Option<&'static str>,
}

fn hint(f: OsFamily) -> DetectOptions {
    DetectOptions {
        family_hint: Some(f),
        ..Default::default()
    }
}

#[test]
fn detects_every_layout() {
    let preseed = DetectOptions {
        family_hint: Some(OsFamily::Debian),
        suite_hints: vec!["bookworm".into()],
        unattended: Unattended::Url("http://10.0.2.2:8080/preseed.cfg".into()),
        ..Default::default()
    };
    let kickstart_in_initrd = DetectOptions {
        unattended: Unattended::InInitrd,
        ..Default::default()
    };
    let cases = vec![
        Case {
            fixture: "debian-mirror",
            url: "http://mirror.example:8080/debian/",
            opts: preseed,
            family: OsFamily::Debian,
            layout: Layout::DebianMirror,
            name: "Debian",
            version: "12.5",
            codename: Some("bookworm"),
            kernel: "dists/bookworm/main/installer-amd64/current/images/netboot/debian-installer/amd64/linux",
            initrd: "dists/bookworm/main/installer-amd64/current/images/netboot/debian-installer/amd64/initrd.gz",
            args: "auto=true priority=critical url=http://10.0.2.2:8080/preseed.cfg mirror/country=manual mirror/protocol=http mirror/http/hostname=mirror.example:8080 mirror/http/directory=/debian mirror/http/proxy= mirror/suite=bookworm",
            method: InstallMethod::Http,
            osinfo: Some("debian12"),
        },
        Case {
            fixture: "debian-mirror",
            url: "ftp://ftp.example/pub/debian",
            opts: DetectOptions::default(),
            family: OsFamily::Debian,
            layout: Layout::DebianMirror,
            name: "Debian",
            version: "12.5",
            codename: Some("bookworm"),
            kernel: "dists/bookworm/main/installer-amd64/current/images/netboot/debian-installer/amd64/linux",
            initrd: "dists/bookworm/main/installer-amd64/current/images/netboot/debian-installer/amd64/initrd.gz",
            args: "mirror/country=manual mirror/protocol=ftp mirror/ftp/hostname=ftp.example mirror/ftp/directory=/pub/debian mirror/suite=bookworm",
            method: InstallMethod::Ftp,
            osinfo: Some("debian12"),
        },
        Case {
            fixture: "ubuntu-mirror",
            url: "http://archive.example/ubuntu/",
            opts: hint(OsFamily::Ubuntu),
            family: OsFamily::Debian,
            layout: Layout::DebianMirror,
            name: "Ubuntu",
            version: "20.04",
            codename: Some("focal"),
            kernel: "dists/focal/main/installer-amd64/current/legacy-images/netboot/ubuntu-installer/amd64/linux",
            initrd: "dists/focal/main/installer-amd64/current/legacy-images/netboot/ubuntu-installer/amd64/initrd.gz",
            args: "mirror/country=manual mirror/protocol=http mirror/http/hostname=archive.example mirror/http/directory=/ubuntu mirror/http/proxy= mirror/suite=focal",
            method: InstallMethod::Http,
            osinfo: Some("ubuntu20.04"),
        },
        Case {
            fixture: "debian-netboot",
            url: "http://h/netboot/",
            opts: DetectOptions::default(),
            family: OsFamily::Debian,
            layout: Layout::DebianNetboot,
            name: "Debian",
            version: "12",
            codename: Some("bookworm"),
            kernel: "debian-installer/amd64/linux",
            initrd: "debian-installer/amd64/initrd.gz",
            args: "",
            method: InstallMethod::Http,
            osinfo: Some("debian12"),
        },
        Case {
            fixture: "debian-images",
            url: "http://h/images/",
            opts: DetectOptions::default(),
            family: OsFamily::Debian,
            layout: Layout::DebianImages,
            name: "Debian",
            version: "11",
            codename: Some("bullseye"),
            kernel: "netboot/debian-installer/amd64/linux",
            initrd: "netboot/debian-installer/amd64/initrd.gz",
            args: "",
            method: InstallMethod::Http,
            osinfo: Some("debian11"),
        },
        Case {
            fixture: "debian-cd",
            url: "http://h/cd/",
            opts: DetectOptions::default(),
            family: OsFamily::Debian,
            layout: Layout::DebianMedia,
            name: "Debian",
            version: "12.5.0",
            codename: Some("bookworm"),
            kernel: "install.amd/vmlinuz",
            initrd: "install.amd/initrd.gz",
            args: "",
            method: InstallMethod::Http,
            osinfo: Some("debian12"),
        },
        Case {
            fixture: "ubuntu-casper",
            url: "nfs://filer/exports/jammy",
            opts: DetectOptions::default(),
            family: OsFamily::Ubuntu,
            layout: Layout::UbuntuCasper,
            name: "Ubuntu-Server",
            version: "22.04.3",
            codename: Some("jammy"),
            kernel: "casper/vmlinuz",
            initrd: "casper/initrd",
            args: "boot=casper ip=dhcp netboot=nfs nfsroot=filer:/exports/jammy",
            method: InstallMethod::Nfs,
            osinfo: Some("ubuntu22.04"),
        },
        Case {
            // cloud-init autoinstall with the NoCloud seed the agent serves.
            fixture: "ubuntu-casper",
            url: "http://h/jammy/",
            opts: DetectOptions {
                unattended: Unattended::Url("http://10.0.2.2:8080/t0k/".into()),
                ..Default::default()
            },
            family: OsFamily::Ubuntu,
            layout: Layout::UbuntuCasper,
            name: "Ubuntu-Server",
            version: "22.04.3",
            codename: Some("jammy"),
            kernel: "casper/vmlinuz",
            initrd: "casper/initrd",
            args: "boot=casper ip=dhcp fetch=http://h/jammy/casper/filesystem.squashfs autoinstall ds=nocloud-net;s=http://10.0.2.2:8080/t0k/",
            method: InstallMethod::Http,
            osinfo: Some("ubuntu22.04"),
        },
        Case {
            fixture: "rhel-treeinfo",
            url: "http://h/rhel9/",
            opts: DetectOptions {
                unattended: Unattended::Url("http://10.0.2.2/ks.cfg".into()),
                ..Default::default()
            },
            family: OsFamily::Rhel,
            layout: Layout::Treeinfo,
            name: "Red Hat Enterprise Linux",
            version: "9.2",
            codename: None,
            kernel: "images/pxeboot/vmlinuz",
            initrd: "images/pxeboot/initrd.img",
            args: "inst.repo=http://h/rhel9/ inst.ks=http://10.0.2.2/ks.cfg",
            method: InstallMethod::Http,
            osinfo: Some("rhel9.1"),
        },
        Case {
            fixture: "rhel-treeinfo",
            url: "nfs://filer/exports/rhel9",
            opts: kickstart_in_initrd,
            family: OsFamily::Rhel,
            layout: Layout::Treeinfo,
            name: "Red Hat Enterprise Linux",
            version: "9.2",
            codename: None,
            kernel: "images/pxeboot/vmlinuz",
            initrd: "images/pxeboot/initrd.img",
            args: "inst.repo=nfs:filer:/exports/rhel9 inst.ks=file:/ks.cfg",
            method: InstallMethod::Nfs,
            osinfo: Some("rhel9.1"),
        },
        Case {
            fixture: "centos-treeinfo",
            url: "ftp://h/centos/7/os/x86_64",
            opts: DetectOptions::default(),
            family: OsFamily::Rhel,
            layout: Layout::Treeinfo,
            name: "CentOS",
            version: "7",
            codename: None,
            kernel: "images/pxeboot/vmlinuz",
            initrd: "images/pxeboot/initrd.img",
            args: "inst.repo=ftp://h/centos/7/os/x86_64/",
            method: InstallMethod::Ftp,
            osinfo: Some("centos7.0"),
        },
        Case {
            fixture: "rocky-pxeboot",
            url: "http://h/rocky/",
            opts: DetectOptions::default(),
            family: OsFamily::Rhel,
            layout: Layout::Pxeboot,
            name: "Red Hat family",
            version: "",
            codename: None,
            kernel: "images/pxeboot/vmlinuz",
            initrd: "images/pxeboot/initrd.img",
            args: "inst.repo=http://h/rocky/",
            method: InstallMethod::Http,
            osinfo: None,
        },
        Case {
            fixture: "suse-content",
            url: "http://h/leap/",
            opts: DetectOptions {
                unattended: Unattended::Url("http://10.0.2.2/autoinst.xml".into()),
                ..Default::default()
            },
            family: OsFamily::Suse,
            layout: Layout::SuseContent,
            name: "openSUSE Leap 15.5",
            version: "15.5",
            codename: None,
            kernel: "boot/x86_64/loader/linux",
            initrd: "boot/x86_64/loader/initrd",
            args: "install=http://h/leap/ autoyast=http://10.0.2.2/autoinst.xml",
            method: InstallMethod::Http,
            osinfo: Some("opensuse15.4"),
        },
        Case {
            fixture: "suse-content",
            url: "nfs://filer/exports/leap",
            opts: DetectOptions::default(),
            family: OsFamily::Suse,
            layout: Layout::SuseContent,
            name: "openSUSE Leap 15.5",
            version: "15.5",
            codename: None,
            kernel: "boot/x86_64/loader/linux",
            initrd: "boot/x86_64/loader/initrd",
            args: "install=nfs://filer/exports/leap/",
            method: InstallMethod::Nfs,
            osinfo: Some("opensuse15.4"),
        },
        Case {
            fixture: "corral-test-installer",
            url: "http://127.0.0.1:8000/tree/",
            opts: DetectOptions {
                guest_url: Some(SourceUrl::parse("http://10.0.2.2:8000/tree/").expect("url")),
                ..Default::default()
            },
            family: OsFamily::CorralTest,
            layout: Layout::Treeinfo,
            name: "corral-test-installer",
            version: "1",
            codename: None,
            kernel: "boot/vmlinuz",
            initrd: "boot/initrd.img",
            args: "corral.install=http://10.0.2.2:8000/tree/ console=ttyS0",
            method: InstallMethod::Http,
            osinfo: None,
        },
        Case {
            fixture: "corral-test-installer-productmd",
            url: "nfs://127.0.0.1/srv/tree",
            opts: DetectOptions::default(),
            family: OsFamily::CorralTest,
            layout: Layout::Treeinfo,
            name: "corral-test-installer",
            version: "1",
            codename: None,
            kernel: "images/pxeboot/vmlinuz",
            initrd: "images/pxeboot/initrd.img",
            args: "corral.install=nfs://127.0.0.1/srv/tree/ console=ttyS0 corral.install",
            method: InstallMethod::Nfs,
            osinfo: None,
        },
        Case {
            fixture: "generic-treeinfo",
            url: "http://h/ex/",
            opts: DetectOptions::default(),
            family: OsFamily::Linux,
            layout: Layout::Treeinfo,
            name: "ExampleOS",
            version: "3.1",
            codename: None,
            kernel: "isolinux/vmlinuz",
            initrd: "isolinux/initrd.img",
            args: "inst.repo=http://h/ex/",
            method: InstallMethod::Http,
            osinfo: None,
        },
        Case {
            fixture: "generic-treeinfo",
            url: "http://h/ex/",
            opts: DetectOptions {
                kernel: Some("isolinux/vmlinuz".into()),
                initrd: Some("isolinux/initrd.img".into()),
                family_hint: Some(OsFamily::Rhel),
                ..Default::default()
            },
            family: OsFamily::Linux,
            layout: Layout::Manual,
            name: "ExampleOS",
            version: "3.1",
            codename: None,
            kernel: "isolinux/vmlinuz",
            initrd: "isolinux/initrd.img",
            args: "inst.repo=http://h/ex/",
            method: InstallMethod::Http,
            osinfo: None,
        },
        Case {
            fixture: "unknown-layout",
            url: "http://h/x/",
            opts: DetectOptions {
                kernel: Some("README".into()),
                initrd: Some("index.html".into()),
                family_hint: Some(OsFamily::Suse),
                ..Default::default()
            },
            family: OsFamily::Suse,
            layout: Layout::Manual,
            name: "manual",
            version: "",
            codename: None,
            kernel: "README",
            initrd: "index.html",
            args: "install=http://h/x/",
            method: InstallMethod::Http,
            osinfo: None,
        },
        // Every layout virt-install's urldetect.py accepts, named like it names them.
        Case {
            // The installer directory of a mirror, as virt-install's documentation gives it.
            fixture: "debian-installer-dir",
            url: "http://mirror.example:8080/debian/dists/bookworm/main/installer-amd64/",
            opts: DetectOptions::default(),
            family: OsFamily::Debian,
            layout: Layout::DebianInstallerDir,
            name: "Debian",
            version: "12",
            codename: Some("bookworm"),
            kernel: "current/images/netboot/debian-installer/amd64/linux",
            initrd: "current/images/netboot/debian-installer/amd64/initrd.gz",
            args: "mirror/country=manual mirror/protocol=http mirror/http/hostname=mirror.example:8080 mirror/http/directory=/debian mirror/http/proxy= mirror/suite=bookworm",
            method: InstallMethod::Http,
            osinfo: Some("debian12"),
        },
        Case {
            // No version.info: the suite in the URL names the release (virt-install's test).
            fixture: "debian-installer-dir-bare",
            url: "ftp://ftp.example/debian/dists/buster/main/installer-amd64",
            opts: DetectOptions::default(),
            family: OsFamily::Debian,
            layout: Layout::DebianInstallerDir,
            name: "Debian",
            version: "",
            codename: Some("buster"),
            kernel: "current/images/netboot/debian-installer/amd64/linux",
            initrd: "current/images/netboot/debian-installer/amd64/initrd.gz",
            args: "mirror/country=manual mirror/protocol=ftp mirror/ftp/hostname=ftp.example mirror/ftp/directory=/debian mirror/suite=buster",
            method: InstallMethod::Ftp,
            osinfo: Some("debian10"),
        },
        Case {
            fixture: "ubuntu-installer-dir",
            url: "http://archive.example/ubuntu/dists/focal/main/installer-amd64/",
            opts: DetectOptions::default(),
            family: OsFamily::Debian,
            layout: Layout::DebianInstallerDir,
            name: "Ubuntu",
            version: "",
            codename: Some("focal"),
            kernel: "current/legacy-images/netboot/ubuntu-installer/amd64/linux",
            initrd: "current/legacy-images/netboot/ubuntu-installer/amd64/initrd.gz",
            args: "mirror/country=manual mirror/protocol=http mirror/http/hostname=archive.example mirror/http/directory=/ubuntu mirror/http/proxy= mirror/suite=focal",
            method: InstallMethod::Http,
            osinfo: Some("ubuntu20.04"),
        },
        Case {
            fixture: "debian-daily",
            url: "https://d-i.example/daily-images/amd64/",
            opts: DetectOptions::default(),
            family: OsFamily::Debian,
            layout: Layout::DebianDaily,
            name: "Debian",
            version: "",
            codename: None,
            kernel: "daily/netboot/debian-installer/amd64/linux",
            initrd: "daily/netboot/debian-installer/amd64/initrd.gz",
            args: "",
            method: InstallMethod::Http,
            osinfo: Some("debiantesting"),
        },
        Case {
            fixture: "opensuse-content",
            url: "http://download.example/distribution/leap/42.3/repo/oss/",
            opts: DetectOptions::default(),
            family: OsFamily::Suse,
            layout: Layout::SuseContent,
            name: "openSUSE Leap 42.3",
            version: "42.3",
            codename: None,
            kernel: "boot/x86_64/loader/linux",
            initrd: "boot/x86_64/loader/initrd",
            args: "install=http://download.example/distribution/leap/42.3/repo/oss/",
            method: InstallMethod::Http,
            osinfo: Some("opensuse42.3"),
        },
        Case {
            fixture: "sles-content",
            url: "nfs://filer/exports/sles10sp4",
            opts: DetectOptions::default(),
            family: OsFamily::Suse,
            layout: Layout::SuseContent,
            name: "SUSE Linux Enterprise Server 10 SP4",
            version: "10.4",
            codename: None,
            kernel: "boot/x86_64/loader/linux",
            initrd: "boot/x86_64/loader/initrd",
            args: "install=nfs://filer/exports/sles10sp4/",
            method: InstallMethod::Nfs,
            osinfo: Some("sles10sp4"),
        },
        Case {
            fixture: "mageia",
            url: "http://mirror.example/mageia/distrib/5/x86_64/",
            opts: DetectOptions::default(),
            family: OsFamily::Linux,
            layout: Layout::Mageia,
            name: "Mageia",
            version: "5",
            codename: None,
            kernel: "isolinux/x86_64/vmlinuz",
            initrd: "isolinux/x86_64/all.rdz",
            args: "automatic=method:http,network:dhcp,server:mirror.example,directory:/mageia/distrib/5/x86_64",
            method: InstallMethod::Http,
            osinfo: Some("mageia5"),
        },
        Case {
            // A treeinfo family only osinfo-db's <tree> patterns know.
            fixture: "generic-treeinfo-osinfo",
            url: "http://mirror.example/circle/8.5/BaseOS/x86_64/os/",
            opts: DetectOptions::default(),
            family: OsFamily::Rhel,
            layout: Layout::Treeinfo,
            name: "Circle Linux",
            version: "8.5",
            codename: None,
            kernel: "images/pxeboot/vmlinuz",
            initrd: "images/pxeboot/initrd.img",
            args: "inst.repo=http://mirror.example/circle/8.5/BaseOS/x86_64/os/",
            method: InstallMethod::Http,
            osinfo: Some("circle8.5"),
        },
    ];
    for c in cases {
        let label = format!("{} at {}", c.fixture, c.url);
        let d = run(c.fixture, c.url, &c.opts).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(d.os.family, c.family, "{label}");
        assert_eq!(d.layout, c.layout, "{label}");
        assert_eq!(d.os.name, c.name, "{label}");
        assert_eq!(d.os.version, c.version, "{label}");
        assert_eq!(d.os.codename.as_deref(), c.codename, "{label}");
        assert_eq!(d.kernel_path, c.kernel, "{label}");
        assert_eq!(d.initrd_path, c.initrd, "{label}");
        assert_eq!(d.installer_args, c.args, "{label}");
        assert_eq!(d.method, c.method, "{label}");
        assert_eq!(d.os.osinfo_id.as_deref(), c.osinfo, "{label}");
        assert!(!d.probes.is_empty(), "{label}");
    }
}

#[test]
fn unknown_layout_lists_every_probe() {
    let err = run("unknown-layout", "http://h/d/", &DetectOptions::default()).expect_err("unknown");
    let msg = err.to_string();
    assert!(
        msg.starts_with("no installable tree found at http://h/d/; tried: "),
        "{msg}"
    );
    for path in [
        ".treeinfo",
        "treeinfo",
        "content",
        "dists/bookworm/Release",
        "dists/focal/Release",
        "MANIFEST",
        "version.info",
        ".disk/info",
        "images/pxeboot/vmlinuz",
    ] {
        assert!(
            msg.contains(&format!("GET http://h/d/{path} → 404 Not Found")),
            "{path} missing from {msg}"
        );
    }
    assert_eq!(err.kind(), corral_model::ErrorKind::NotFound);
    // The probe list is also available as data, in order.
    assert_eq!(err.probes()[0].request, "GET http://h/d/.treeinfo");
    assert_eq!(err.probes()[1].request, "GET http://h/d/treeinfo");
}

#[test]
fn broken_trees_say_what_is_wrong() {
    let cases: &[(&str, DetectOptions, &str)] = &[
        (
            "treeinfo-aarch64",
            DetectOptions::default(),
            "the tree is for aarch64; corral installs x86_64 guests",
        ),
        (
            "treeinfo-escape",
            DetectOptions::default(),
            "treeinfo kernel path: path \"../../../etc/passwd\" leaves the tree",
        ),
        (
            "suse-content-s390x",
            DetectOptions::default(),
            "its SUSE content file says the tree is for s390x; corral installs x86_64 guests",
        ),
        (
            "treeinfo-no-kernel",
            DetectOptions::default(),
            "its treeinfo (Fedora 39) names no kernel and initrd that exist",
        ),
        (
            "debian-netboot",
            DetectOptions {
                kernel: Some("debian-installer/amd64/vmlinuz".into()),
                ..Default::default()
            },
            "kernel \"debian-installer/amd64/vmlinuz\" not found in the tree",
        ),
        (
            "debian-netboot",
            DetectOptions {
                kernel: Some("../x".into()),
                ..Default::default()
            },
            "kernel=../x: path \"../x\" leaves the tree",
        ),
    ];
    for (fx, opts, needle) in cases {
        let err = run(fx, "http://h/t/", opts).expect_err(fx);
        let msg = err.to_string();
        assert!(msg.contains(needle), "{fx}: {msg}");
        if !needle.starts_with("kernel=") {
            assert!(msg.contains("tried: GET http://h/t/"), "{fx}: {msg}");
        }
    }
}

#[test]
fn installer_directories_of_other_architectures_are_refused() {
    let err = run(
        "debian-installer-dir",
        "http://h/debian/dists/bookworm/main/installer-arm64/",
        &DetectOptions::default(),
    )
    .expect_err("arm64");
    assert!(
        err.to_string()
            .contains("it is a Debian installer directory for arm64; corral installs amd64"),
        "{err}"
    );
    assert_eq!(err.kind(), corral_model::ErrorKind::InvalidInput);
}

#[test]
fn an_unreachable_host_stops_at_the_first_probe() {
    let url = SourceUrl::parse("http://10.9.9.9/").expect("url");
    let err = detect(&DeadProbe, &url, &DetectOptions::default()).expect_err("dead");
    assert_eq!(
        err.to_string(),
        "cannot read install tree at http://10.9.9.9/: GET http://10.9.9.9/.treeinfo: connection refused; tried: GET http://10.9.9.9/.treeinfo → error: connection refused"
    );
    assert_eq!(err.probes().len(), 1);
}

#[test]
fn debian_hint_tries_mirror_layouts_before_suse() {
    let d = run("debian-mirror", "http://h/debian/", &hint(OsFamily::Debian)).expect("detect");
    let requests: Vec<&str> = d.probes.iter().map(|p| p.request.as_str()).collect();
    assert!(
        !requests.contains(&"GET http://h/debian/content"),
        "{requests:?}"
    );
    assert_eq!(requests[2], "GET http://h/debian/dists/bookworm/Release");
}

#[test]
fn notes_explain_protocol_limits() {
    let d = run(
        "debian-mirror",
        "nfs://filer/exports/debian",
        &DetectOptions::default(),
    )
    .expect("detect");
    assert_eq!(d.installer_args, "");
    assert!(
        d.notes
            .iter()
            .any(|n| n.contains("cannot read packages over NFS")),
        "{:?}",
        d.notes
    );
    let d = run("debian-netboot", "http://h/nb/", &DetectOptions::default()).expect("detect");
    assert!(
        d.notes.iter().any(|n| n.contains("not a mirror root")),
        "{:?}",
        d.notes
    );
}

#[test]
fn credentials_reach_the_installer_but_not_the_messages() {
    let d = run(
        "rhel-treeinfo",
        "ftp://user:pw@h/rhel/",
        &DetectOptions::default(),
    )
    .expect("detect");
    assert_eq!(d.installer_args, "inst.repo=ftp://user:pw@h/rhel/");
    let err = run(
        "unknown-layout",
        "ftp://user:pw@h/x/",
        &DetectOptions::default(),
    )
    .expect_err("unknown");
    assert!(!err.to_string().contains("pw@"), "{err}");
}
