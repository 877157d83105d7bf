//! Kernel arguments that point an installer at its tree and at its unattended file, per
//! installer family. These are the arguments each installer documents:
//! debian-installer's `mirror/*` and `url=` preseed keys, Anaconda's `inst.repo=` and
//! `inst.ks=`, linuxrc's `install=` and `autoyast=`, casper's `netboot=`/`fetch=`.

use crate::templates::OsFamily;
use crate::url::{Scheme, SourceUrl};

/// Where the installer finds its unattended file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Unattended {
    #[default]
    None,
    /// Fetched by the installer from this URL (served by the agent).
    Url(String),
    /// Appended to the initrd (see `crate::seed::append_to_initrd`) under the file name
    /// [`unattended_initrd_name`] gives for the family.
    InInitrd,
}

/// The path inside the initrd where each family's installer looks for its unattended file.
pub fn unattended_initrd_name(family: OsFamily) -> Option<&'static str> {
    match family {
        OsFamily::Debian => Some("preseed.cfg"),
        OsFamily::Rhel => Some("ks.cfg"),
        OsFamily::Suse => Some("autoinst.xml"),
        _ => None,
    }
}

fn strip_slash(path: &str) -> &str {
    if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    }
}

/// Resolve `.` and `..` in an absolute directory path (`/debian/dists/x/main/i/../../../../`
/// → `/debian/`); `..` never climbs above `/`.
fn normalize_dir(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        "/".into()
    } else {
        format!("/{}/", parts.join("/"))
    }
}

/// drakx (Mageia's installer) reads its source from `automatic=method:…,server:…,directory:…`;
/// without it, it asks.
pub fn mageia_args(tree: &SourceUrl, notes: &mut Vec<String>) -> String {
    match tree.scheme {
        Scheme::Http | Scheme::Https | Scheme::Ftp => format!(
            "automatic=method:{},network:dhcp,server:{},directory:{}",
            if tree.scheme == Scheme::Ftp {
                "ftp"
            } else {
                "http"
            },
            tree.authority(),
            strip_slash(&tree.path)
        ),
        Scheme::Nfs => format!(
            "automatic=method:nfs,network:dhcp,server:{},directory:{}",
            tree.host,
            strip_slash(&tree.path)
        ),
        Scheme::File => {
            notes.push(format!(
                "{tree} is a local directory the guest cannot reach; the Mageia installer will ask where its packages are"
            ));
            String::new()
        }
    }
}

/// Arguments for `family` installing from `tree` (a directory URL as the guest sees it).
/// `mirror_root` is the Debian/Ubuntu mirror root relative to `tree`, when the tree is one.
/// Anything the user should know (an installer that cannot use the protocol) goes to `notes`.
pub fn installer_args(
    family: OsFamily,
    tree: &SourceUrl,
    mirror_root: Option<&str>,
    codename: Option<&str>,
    unattended: &Unattended,
    notes: &mut Vec<String>,
) -> String {
    let mut a: Vec<String> = Vec::new();
    let url = tree.to_string_with_credentials();
    let local = tree.scheme == Scheme::File;
    if local {
        notes.push(format!(
            "{tree} is a local directory the guest cannot reach; serve it over HTTP and pass that URL as the guest URL for the installer to find its packages"
        ));
    }
    match family {
        OsFamily::Debian => {
            match unattended {
                Unattended::Url(u) => a.push(format!("auto=true priority=critical url={u}")),
                Unattended::InInitrd => a.push("auto=true priority=critical".into()),
                Unattended::None => {}
            }
            match (mirror_root, tree.scheme) {
                (Some(root), Scheme::Http | Scheme::Https | Scheme::Ftp) => {
                    let proto = tree.scheme.as_str();
                    let dir = normalize_dir(&tree.join_path(root));
                    a.push(format!("mirror/country=manual mirror/protocol={proto}"));
                    a.push(format!("mirror/{proto}/hostname={}", tree.authority()));
                    a.push(format!("mirror/{proto}/directory={}", strip_slash(&dir)));
                    if tree.scheme != Scheme::Ftp {
                        a.push(format!("mirror/{proto}/proxy="));
                    }
                    if let Some(c) = codename {
                        a.push(format!("mirror/suite={c}"));
                    }
                }
                (Some(_), Scheme::Nfs) => notes.push(
                    "debian-installer cannot read packages over NFS: it boots from the tree's kernel and initrd, then asks for an HTTP or FTP mirror".into(),
                ),
                _ => notes.push(
                    "this is not a mirror root, so debian-installer will ask for a mirror (or pass mirror/http/hostname= and mirror/http/directory= with --extra-args)".into(),
                ),
            }
        }
        OsFamily::Ubuntu => {
            a.push("boot=casper ip=dhcp".into());
            match tree.scheme {
                Scheme::Nfs => a.push(format!(
                    "netboot=nfs nfsroot={}:{}",
                    tree.host,
                    strip_slash(&tree.path)
                )),
                Scheme::Http | Scheme::Https | Scheme::Ftp => {
                    a.push(format!("fetch={url}casper/filesystem.squashfs"));
                    notes.push("Ubuntu live-server trees boot best from the ISO: pass url=<ISO URL> with --extra-args if fetch= fails".into());
                }
                Scheme::File => {}
            }
            match unattended {
                Unattended::Url(u) => a.push(format!("autoinstall ds=nocloud-net;s={u}")),
                Unattended::InInitrd => a.push("autoinstall".into()),
                Unattended::None => {}
            }
        }
        OsFamily::Rhel | OsFamily::Linux => {
            match tree.scheme {
                Scheme::Nfs => a.push(format!(
                    "inst.repo=nfs:{}:{}",
                    tree.host,
                    strip_slash(&tree.path)
                )),
                Scheme::Http | Scheme::Https | Scheme::Ftp => a.push(format!("inst.repo={url}")),
                Scheme::File => {}
            }
            match unattended {
                Unattended::Url(u) => a.push(format!("inst.ks={u}")),
                Unattended::InInitrd => a.push("inst.ks=file:/ks.cfg".into()),
                Unattended::None => {}
            }
        }
        OsFamily::Suse => {
            match tree.scheme {
                Scheme::Nfs => a.push(format!("install=nfs://{}{}", tree.host, tree.path)),
                Scheme::Http | Scheme::Https | Scheme::Ftp => a.push(format!("install={url}")),
                Scheme::File => {}
            }
            match unattended {
                Unattended::Url(u) => a.push(format!("autoyast={u}")),
                Unattended::InInitrd => a.push("autoyast=file:///autoinst.xml".into()),
                Unattended::None => {}
            }
        }
        OsFamily::CorralTest => {
            if !local {
                // The test installer's /init reads `corral.install=URL` and fetches its
                // payload (`images/disk.img.gz`) from the tree (docs/test-guest.md).
                a.push(format!("corral.install={url}"));
            }
        }
        OsFamily::Windows | OsFamily::Other => {}
    }
    a.join(" ")
}
