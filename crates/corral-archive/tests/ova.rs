//! OVA/OVF: vendor descriptors map to the right spec, corral's OVA export follows DSP0243 and
//! round-trips, and hostile packages (XML bombs, traversal, lying sizes, bad digests, VMDKs
//! that point at host files, backing files) are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test and benchmark code may panic

mod common;

use common::*;
use corral_archive::ova::*;
use corral_archive::*;
use corral_model::*;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/ovf")
            .join(name),
    )
    .unwrap()
}

#[test]
fn virtualbox_descriptor() {
    let p = parse_ovf(&fixture("virtualbox.ovf")).unwrap();
    assert_eq!(p.ovf_version, 1);
    assert_eq!(p.spec.name, "Debian-12");
    assert_eq!(p.spec.vcpus, 2);
    assert_eq!(p.spec.memory_bytes, 2048 << 20);
    assert_eq!(p.spec.firmware, Firmware::Uefi);
    assert_eq!(p.disks.len(), 1);
    assert_eq!(p.disks[0].capacity_bytes, 21474836480); // bytes without units
    assert_eq!(p.disks[0].bus, DiskBus::Sata);
    assert_eq!(p.disks[0].format, ImageFormat::Vmdk);
    assert_eq!(
        p.disks[0].file.as_ref().unwrap().href,
        "Debian 12-disk001.vmdk"
    );
    assert_eq!(p.spec.cdroms.len(), 1);
    assert_eq!(p.spec.cdroms[0].bus, DiskBus::Ide);
    assert_eq!(p.spec.nics.len(), 1);
    assert_eq!(p.spec.nics[0].model, NicModel::E1000);
    assert_eq!(p.spec.nics[0].network, "NAT");
    assert!(
        p.warnings.iter().any(|w| w.contains("sound card")),
        "{:?}",
        p.warnings
    );
    assert!(p
        .warnings
        .iter()
        .any(|w| w.contains("not a valid corral name")));
}

#[test]
fn vmware_descriptor() {
    let p = parse_ovf(&fixture("vmware.ovf")).unwrap();
    assert_eq!(p.spec.name, "web");
    assert_eq!(p.spec.vcpus, 4);
    assert_eq!(p.spec.memory_bytes, 8192 << 20);
    assert_eq!(p.spec.firmware, Firmware::Uefi);
    // byte * 2^30 and byte * 2^20, ordered by AddressOnParent, not by document order
    assert_eq!(p.disks[0].capacity_bytes, 16 << 30);
    assert_eq!(p.disks[1].capacity_bytes, 512 << 20);
    assert_eq!(p.disks[0].file.as_ref().unwrap().size, Some(1234567));
    assert_eq!(p.spec.disks[0].size_bytes, 16 << 30);
    assert_eq!(p.spec.nics[0].network, "VM Network");
    let w = p.warnings.join("\n");
    assert!(w.contains("SCSI controller"), "{w}");
    assert!(w.contains("\"vmxnet3\" is attached as e1000"), "{w}");
    assert!(w.contains("graphics controller"), "{w}");
}

#[test]
fn xenserver_descriptor() {
    let p = parse_ovf(&fixture("xenserver.ovf")).unwrap();
    assert_eq!(p.spec.name, "db01--copy");
    assert_eq!(p.spec.description, "Database server");
    assert_eq!(p.spec.vcpus, 8);
    assert_eq!(p.spec.memory_bytes, 4096 << 20);
    assert_eq!(p.spec.firmware, Firmware::Uefi);
    assert_eq!(p.disks[0].capacity_bytes, 10 << 30);
    assert_eq!(p.spec.nics[0].mac, "1a:2b:3c:4d:5e:6f");
    assert_eq!(p.spec.cdroms.len(), 1);
    assert!(p.warnings.iter().any(|w| w.contains("other device")));
}

#[test]
fn ovirt_descriptor() {
    let p = parse_ovf(&fixture("ovirt.ovf")).unwrap();
    assert_eq!(p.spec.name, "app01");
    assert_eq!(p.spec.description, "Application server");
    assert_eq!(p.spec.vcpus, 2);
    assert_eq!(p.spec.memory_bytes, 3072 << 20);
    assert_eq!(p.spec.firmware, Firmware::Uefi);
    assert_eq!(p.disks[0].capacity_bytes, 10 << 30);
    assert_eq!(p.disks[0].format, ImageFormat::Qcow2); // volume-format COW wins over "vmdk"
    assert_eq!(p.spec.nics[0].model, NicModel::Virtio);
    assert_eq!(p.spec.nics[0].mac, "56:6f:1a:2b:00:01");
}

#[test]
fn ovf2_descriptor() {
    let p = parse_ovf(&fixture("ovf2.ovf")).unwrap();
    assert_eq!(p.ovf_version, 2);
    assert_eq!(p.spec.memory_bytes, 1 << 30);
    assert_eq!(p.disks[0].capacity_bytes, 8 << 30);
    assert_eq!(p.disks[0].format, ImageFormat::Qcow2);
    assert_eq!(p.spec.nics[0].model, NicModel::Virtio);
    assert_eq!(p.spec.firmware, Firmware::Bios);
}

#[test]
fn hostile_descriptors_are_refused() {
    let bomb = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><VirtualSystem><Name>&lol3;</Name></VirtualSystem></Envelope>"#;
    let err = parse_ovf(bomb).unwrap_err().to_string();
    assert!(err.contains("DTD"), "{err}");
    let xxe = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><Envelope>&e;</Envelope>"#;
    assert!(parse_ovf(xxe).unwrap_err().to_string().contains("DTD"));
    let trav = fixture("vmware.ovf").replace("web-disk1.vmdk", "../../etc/shadow");
    assert!(parse_ovf(&trav)
        .unwrap_err()
        .to_string()
        .contains("unsafe href"));
    let abs = fixture("vmware.ovf").replace("web-disk1.vmdk", "/etc/shadow");
    assert!(parse_ovf(&abs)
        .unwrap_err()
        .to_string()
        .contains("absolute"));
    let remote = fixture("vmware.ovf").replace("web-disk1.vmdk", "http://example.invalid/x.vmdk");
    assert!(parse_ovf(&remote)
        .unwrap_err()
        .to_string()
        .contains("remote URL"));
    let units = fixture("vmware.ovf").replace("byte * 2^30", "furlongs");
    assert!(parse_ovf(&units)
        .unwrap_err()
        .to_string()
        .contains("furlongs"));
    assert!(parse_ovf("<html/>")
        .unwrap_err()
        .to_string()
        .contains("not <Envelope>"));
    assert!(parse_ovf("not xml").is_err());
}

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn make_disks(dir: &Path) -> (String, String) {
    let a = dir.join("a.qcow2").display().to_string();
    let b = dir.join("b.raw").display().to_string();
    run("qemu-img", &["create", "-f", "qcow2", &a, "24M"]);
    run(
        "qemu-io",
        &["-c", "write -P 0x61 0 2M", "-c", "write -P 0x62 20M 1M", &a],
    );
    run("qemu-img", &["create", "-f", "raw", &b, "8M"]);
    run("qemu-io", &["-f", "raw", "-c", "write -P 0x63 1M 1M", &b]);
    (a, b)
}

#[test]
fn ova_export_follows_dsp0243_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = make_disks(dir.path());
    let mut spec = spec("app", &["disk0", "disk1"]);
    spec.disks[0].format = DiskFormat::Qcow2;
    spec.disks[1].bus = DiskBus::Sata;
    spec.cdroms.push(Cdrom {
        device: "cdrom0".into(),
        bus: DiskBus::Ide,
        media: None,
    });
    let disks = vec![
        OvaDisk {
            device: "disk0".into(),
            path: a.clone().into(),
            format: DiskFormat::Qcow2,
        },
        OvaDisk {
            device: "disk1".into(),
            path: b.clone().into(),
            format: DiskFormat::Raw,
        },
    ];
    let ova_path = dir.path().join("app.ova");
    let out = std::fs::File::create(&ova_path).unwrap();
    let summary = write_ova(out, &spec, &disks, dir.path(), &no_progress).unwrap();
    assert_eq!(
        summary.archive_bytes,
        std::fs::metadata(&ova_path).unwrap().len()
    );

    // Order: descriptor, manifest, then files in References order.
    let bytes = std::fs::read(&ova_path).unwrap();
    assert_eq!(detect_format(&bytes[..4096]), ArchiveKind::Ova);
    let members = read_tar(&bytes);
    let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(
        names,
        ["app.ovf", "app.mf", "app-disk0.vmdk", "app-disk1.vmdk"]
    );
    // The manifest verifies with an independent SHA-256.
    let mf = String::from_utf8(members[1].1.clone()).unwrap();
    for (name, data) in [&members[0], &members[2], &members[3]] {
        let line = format!("SHA256({name})= {}", hex::encode(Sha256::digest(data)));
        assert!(mf.lines().any(|l| l == line), "{line} not in {mf}");
    }
    // Each VMDK is a streamOptimized image qemu-img accepts.
    let x = tempfile::tempdir().unwrap();
    for (name, data) in &members[2..] {
        let p = x.path().join(name);
        std::fs::write(&p, data).unwrap();
        let info = run(
            "qemu-img",
            &["info", "--output=json", "-f", "vmdk", p.to_str().unwrap()],
        );
        assert!(
            info.contains("\"create-type\": \"streamOptimized\""),
            "{info}"
        );
        run("qemu-img", &["check", "-f", "vmdk", p.to_str().unwrap()]);
    }
    // The descriptor says what we exported, in the structure DSP8023 requires.
    let desc = String::from_utf8(members[0].1.clone()).unwrap();
    check_dsp8023(&desc).unwrap_or_else(|e| panic!("{e}\n{desc}"));
    let plan = parse_ovf(&desc).unwrap();
    assert_eq!(plan.spec.vcpus, 2);
    assert_eq!(plan.spec.memory_bytes, 512 << 20);
    assert_eq!(plan.spec.firmware, Firmware::Uefi);
    assert_eq!(plan.spec.description, "a test VM");
    assert_eq!(plan.disks[0].capacity_bytes, 24 << 20);
    assert_eq!(plan.disks[1].bus, DiskBus::Sata);
    assert_eq!(plan.spec.nics[0].model, NicModel::Virtio);
    assert_eq!(plan.spec.nics[0].mac, "52:54:00:12:34:56");
    assert_eq!(plan.spec.cdroms.len(), 1);
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);

    // Dry run plan straight from the .ova, then a real import.
    let dry = plan_ovf(&ova_path, &Limits::default()).unwrap();
    assert_eq!(dry, plan);
    let staging = tempfile::tempdir().unwrap();
    let mut sink = DirSink::new(staging.path(), None);
    let vm = import_ovf(&ova_path, &mut sink, &Limits::default(), &no_progress).unwrap();
    assert_eq!(vm.disks.len(), 2);
    assert!(vm.warnings.is_empty(), "{:?}", vm.warnings);
    run(
        "qemu-img",
        &["compare", &a, vm.disks[0].path.to_str().unwrap()],
    );
    run(
        "qemu-img",
        &["compare", &b, vm.disks[1].path.to_str().unwrap()],
    );
    assert_eq!(files_under(staging.path()), ["disk0.qcow2", "disk1.qcow2"]);
}

/// A package directory: descriptor with one raw disk, plus a manifest.
fn package_dir(dir: &Path, data: &[u8], mf: bool) {
    std::fs::write(dir.join("disk.img"), data).unwrap();
    let desc = fixture("ovf2.ovf")
        .replace("disk.qcow2", "disk.img")
        .replace("200704", &data.len().to_string())
        .replace("qcow-image-format.html", "raw")
        .replace("ovf:capacity=\"8\"", "ovf:capacity=\"2\"")
        .replace("byte * 2^30\" ovf:format", "byte * 2^20\" ovf:format");
    std::fs::write(dir.join("edge.ovf"), &desc).unwrap();
    if mf {
        let m = format!(
            "SHA256(edge.ovf)= {}\nSHA1(disk.img)= {}\n",
            hex::encode(Sha256::digest(desc.as_bytes())),
            hex::encode(sha1::Sha1::digest(data))
        );
        std::fs::write(dir.join("edge.mf"), m).unwrap();
    }
}

#[test]
fn ovf_directory_imports_and_checks_the_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = noise(2 << 20, 3);
    data[..4096].fill(0);
    package_dir(dir.path(), &data, true);
    let staging = tempfile::tempdir().unwrap();
    let mut sink = DirSink::new(staging.path(), Some(DiskFormat::Raw));
    let vm = import_ovf(dir.path(), &mut sink, &Limits::default(), &no_progress).unwrap();
    assert_eq!(std::fs::read(&vm.disks[0].path).unwrap(), data);
    assert_eq!(vm.format_version, "ovf-2");
    // the .ovf file itself works too
    let staging = tempfile::tempdir().unwrap();
    let mut sink = DirSink::new(staging.path(), Some(DiskFormat::Raw));
    import_ovf(
        &dir.path().join("edge.ovf"),
        &mut sink,
        &Limits::default(),
        &no_progress,
    )
    .unwrap();

    // A corrupted disk fails the manifest.
    let mut bad = data.clone();
    bad[5000] ^= 1;
    std::fs::write(dir.path().join("disk.img"), &bad).unwrap();
    let staging = tempfile::tempdir().unwrap();
    let mut sink = DirSink::new(staging.path(), Some(DiskFormat::Raw));
    let err = import_ovf(dir.path(), &mut sink, &Limits::default(), &no_progress).unwrap_err();
    assert!(
        err.to_string()
            .contains("checksum mismatch in disk.img (SHA1)"),
        "{err}"
    );
}

#[test]
fn image_files_larger_than_their_disk_allows_are_refused() {
    // A 2 MiB disk whose image file is 70 MiB (declared consistently, so only the capacity
    // bound catches it): refused before it is copied, as a directory and as an OVA.
    let dir = tempfile::tempdir().unwrap();
    let data = vec![1u8; 70 << 20];
    package_dir(dir.path(), &data, false);
    let st = tempfile::tempdir().unwrap();
    let err = import_ovf(
        dir.path(),
        &mut DirSink::new(st.path(), None),
        &Limits::default(),
        &no_progress,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("its disk's capacity allows"),
        "{err}"
    );
    let desc = std::fs::read(dir.path().join("edge.ovf")).unwrap();
    let ova = write_tar(&[
        Member::file("edge.ovf", &desc),
        Member::file("disk.img", &data),
    ]);
    let st = tempfile::tempdir().unwrap();
    let err = read_ova(
        &ova[..],
        &mut DirSink::new(st.path(), None),
        &Limits::default(),
        &no_progress,
    )
    .unwrap_err();
    let msg = format!("{err}");
    assert!(
        msg.contains("more than the") && msg.contains("capacity allows"),
        "{msg}"
    );
    assert!(files_under(st.path())
        .iter()
        .all(|f| !f.contains("ova-file")));
}

#[test]
fn hostile_packages_are_refused() {
    // Lying size.
    let dir = tempfile::tempdir().unwrap();
    package_dir(dir.path(), &noise(1 << 20, 1), false);
    std::fs::write(dir.path().join("disk.img"), noise(1 << 19, 1)).unwrap();
    let st = tempfile::tempdir().unwrap();
    let err = import_ovf(
        dir.path(),
        &mut DirSink::new(st.path(), None),
        &Limits::default(),
        &no_progress,
    )
    .unwrap_err();
    assert!(err.to_string().contains("not the declared"), "{err}");

    // A symlink in the package pointing outside it.
    let dir = tempfile::tempdir().unwrap();
    package_dir(dir.path(), &noise(1 << 20, 1), false);
    std::fs::remove_file(dir.path().join("disk.img")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("disk.img")).unwrap();
    let err = import_ovf(
        dir.path(),
        &mut DirSink::new(st.path(), None),
        &Limits::default(),
        &no_progress,
    )
    .unwrap_err();
    assert!(err.to_string().contains("outside the package"), "{err}");

    // A VMDK whose descriptor names a host file as its extent.
    let dir = tempfile::tempdir().unwrap();
    let vmdk = dir.path().join("evil.vmdk");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            vmdk.to_str().unwrap(),
            "1M",
        ],
    );
    let err = check_foreign_image(&vmdk, "vmdk").unwrap_err().to_string();
    assert!(err.contains("not a single self-contained file"), "{err}");
    // A qcow2 with a backing file.
    let base = dir.path().join("base.qcow2");
    let top = dir.path().join("top.qcow2");
    run(
        "qemu-img",
        &["create", "-f", "qcow2", base.to_str().unwrap(), "1M"],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            "-F",
            "qcow2",
            top.to_str().unwrap(),
        ],
    );
    let err = check_foreign_image(&top, "qcow2").unwrap_err().to_string();
    assert!(err.contains("backing file"), "{err}");

    // An OVA whose first member is not the descriptor, or whose member lies about its size,
    // or with a bad manifest digest; each leaves only the sink's own files behind.
    let desc = fixture("ovf2.ovf")
        .replace("200704", "4096")
        .replace("disk.qcow2", "disk.img")
        .replace("qcow-image-format.html", "raw");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "disk first",
            write_tar(&[
                Member::file("disk.img", &[0; 4096]),
                Member::file("e.ovf", desc.as_bytes()),
            ]),
            "starts with its .ovf",
        ),
        (
            "lying member",
            write_tar(&[
                Member::file("e.ovf", desc.as_bytes()),
                Member::file("disk.img", &[0; 1024]),
            ]),
            "not the 4096",
        ),
        (
            "bad mf",
            write_tar(&[
                Member::file("e.ovf", desc.as_bytes()),
                Member::file(
                    "e.mf",
                    format!("SHA256(disk.img)= {}\n", "00".repeat(32)).as_bytes(),
                ),
                Member::file("disk.img", &[0; 4096]),
            ]),
            "checksum mismatch in disk.img",
        ),
        (
            "missing disk",
            write_tar(&[Member::file("e.ovf", desc.as_bytes())]),
            "missing from the OVA",
        ),
        (
            "traversal",
            write_tar(&[
                Member::file("e.ovf", desc.as_bytes()),
                Member::file("../disk.img", &[0; 4096]),
            ]),
            "'..' is not allowed",
        ),
        (
            "symlink",
            write_tar(&[
                Member::file("e.ovf", desc.as_bytes()),
                Member::special("disk.img", b'2', "/etc/passwd"),
            ]),
            "symbolic links",
        ),
    ];
    for (case, bytes, needle) in cases {
        let root = tempfile::tempdir().unwrap();
        let staging = root.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let mut sink = DirSink::new(&staging, None);
        let err =
            read_ova(&bytes[..], &mut sink, &Limits::default(), &no_progress).expect_err(case);
        assert!(err.to_string().contains(needle), "{case}: {err}");
        assert!(
            files_under(root.path())
                .iter()
                .all(|f| f.starts_with("staging/")),
            "{case}"
        );
    }
}

const OVF_NS: &str = "http://schemas.dmtf.org/ovf/envelope/1";
const RASD_NS: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
const VSSD_NS: &str =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData";

fn elements<'a, 'i>(n: roxmltree::Node<'a, 'i>) -> Vec<roxmltree::Node<'a, 'i>> {
    n.children().filter(|c| c.is_element()).collect()
}

fn ovf_attr<'a>(n: roxmltree::Node<'a, '_>, name: &str) -> Result<&'a str, String> {
    n.attribute((OVF_NS, name))
        .ok_or_else(|| format!("<{}> lacks the required ovf:{name}", n.tag_name().name()))
}

/// Children of `n` are in the namespace `ns` and in the order of `order` (repeats allowed).
fn check_sequence(n: roxmltree::Node, ns: &str, order: &[&str]) -> Result<(), String> {
    let mut last = 0;
    for c in elements(n) {
        if c.tag_name().namespace() != Some(ns) {
            return Err(format!("<{}> in {ns:?}", c.tag_name().name()));
        }
        let name = c.tag_name().name();
        let pos = order
            .iter()
            .position(|o| *o == name)
            .ok_or_else(|| format!("<{name}> is not in the schema's sequence"))?;
        if pos < last {
            return Err(format!("<{name}> comes after <{}>", order[last]));
        }
        last = pos;
    }
    Ok(())
}

/// A structural check of an OVF 1.x descriptor against DSP8023's rules that matter to other
/// tools: Envelope children References, sections, one VirtualSystem; sections open with Info;
/// required attributes; every File used by a Disk and every Disk by an Item's HostResource;
/// NetworkSection with at least one Network; RASD and VSSD elements in schema order.
fn check_dsp8023(desc: &str) -> Result<(), String> {
    let doc = roxmltree::Document::parse(desc).map_err(|e| e.to_string())?;
    let env = doc.root_element();
    if env.tag_name().name() != "Envelope" || env.tag_name().namespace() != Some(OVF_NS) {
        return Err("the root is not an OVF Envelope".into());
    }
    let kids = elements(env);
    let name = |n: &roxmltree::Node| n.tag_name().name().to_string();
    if kids.first().map(name).as_deref() != Some("References") {
        return Err("References is not the Envelope's first child".into());
    }
    let content: Vec<_> = kids
        .iter()
        .filter(|k| {
            matches!(
                name(k).as_str(),
                "VirtualSystem" | "VirtualSystemCollection"
            )
        })
        .collect();
    if content.len() != 1 || kids.last().map(name).as_deref() != Some("VirtualSystem") {
        return Err("the Envelope must end with exactly one VirtualSystem".into());
    }
    let sections = &kids[1..kids.len() - 1];
    for s in sections {
        if !name(s).ends_with("Section") {
            return Err(format!(
                "<{}> between References and VirtualSystem",
                name(s)
            ));
        }
    }
    let check_section = |s: roxmltree::Node| -> Result<(), String> {
        if elements(s).first().map(|c| c.tag_name().name()) != Some("Info") {
            return Err(format!("<{}> does not open with <Info>", name(&s)));
        }
        Ok(())
    };
    // References.
    let mut files = std::collections::BTreeMap::new();
    for f in elements(kids[0]) {
        if name(&f) != "File" {
            return Err(format!("<{}> in References", name(&f)));
        }
        let id = ovf_attr(f, "id")?;
        ovf_attr(f, "href")?;
        if files.insert(id.to_string(), false).is_some() {
            return Err(format!("File id {id:?} twice"));
        }
    }
    // DiskSection and NetworkSection.
    let mut disks = std::collections::BTreeMap::new();
    let mut networks = std::collections::BTreeSet::new();
    for s in sections {
        check_section(*s)?;
        match name(s).as_str() {
            "DiskSection" => {
                for d in elements(*s).into_iter().skip(1) {
                    let id = ovf_attr(d, "diskId")?;
                    ovf_attr(d, "capacity")?;
                    ovf_attr(d, "format")?;
                    if let Some(f) = d.attribute((OVF_NS, "fileRef")) {
                        *files
                            .get_mut(f)
                            .ok_or_else(|| format!("Disk {id:?} names unknown File {f:?}"))? = true;
                    }
                    disks.insert(id.to_string(), false);
                }
            }
            "NetworkSection" => {
                let nets = &elements(*s)[1..];
                if nets.is_empty() {
                    return Err("NetworkSection without a Network".into());
                }
                for n in nets {
                    networks.insert(ovf_attr(*n, "name")?.to_string());
                }
            }
            _ => {}
        }
    }
    if let Some((f, _)) = files.iter().find(|(_, used)| !**used) {
        return Err(format!("File {f:?} is referenced by no Disk"));
    }
    // VirtualSystem.
    let vs = *content[0];
    ovf_attr(vs, "id")?;
    check_section(vs)?;
    let mut ids = std::collections::BTreeSet::new();
    let mut parents = Vec::new();
    for s in elements(vs).into_iter().skip(1) {
        if name(&s) == "Name" {
            continue;
        }
        check_section(s)?;
        if name(&s) != "VirtualHardwareSection" {
            continue;
        }
        let mut items = 0;
        for c in elements(s).into_iter().skip(1) {
            match name(&c).as_str() {
                "System" => check_sequence(
                    c,
                    VSSD_NS,
                    &[
                        "AutomaticRecoveryAction",
                        "AutomaticShutdownAction",
                        "AutomaticStartupAction",
                        "AutomaticStartupActionDelay",
                        "AutomaticStartupActionSequenceNumber",
                        "Caption",
                        "ConfigurationDataRoot",
                        "ConfigurationFile",
                        "ConfigurationID",
                        "CreationTime",
                        "Description",
                        "ElementName",
                        "InstanceID",
                        "LogDataRoot",
                        "Notes",
                        "RecoveryFile",
                        "SnapshotDataRoot",
                        "SuspendDataRoot",
                        "SwapFileDataRoot",
                        "VirtualSystemIdentifier",
                        "VirtualSystemType",
                    ],
                )?,
                "Item" => {
                    items += 1;
                    check_sequence(c, RASD_NS, RASD_ORDER)
                        .map_err(|e| format!("Item {items}: {e}"))?;
                    let field = |f: &str| {
                        elements(c)
                            .into_iter()
                            .filter(|e| e.tag_name().name() == f)
                            .filter_map(|e| e.text().map(str::to_string))
                            .collect::<Vec<_>>()
                    };
                    for req in ["ElementName", "InstanceID", "ResourceType"] {
                        if field(req).len() != 1 {
                            return Err(format!("Item {items} lacks rasd:{req}"));
                        }
                    }
                    if !ids.insert(field("InstanceID")[0].clone()) {
                        return Err(format!("Item {items}: InstanceID repeated"));
                    }
                    parents.extend(field("Parent"));
                    for h in field("HostResource") {
                        let d = h
                            .strip_prefix("ovf:/disk/")
                            .and_then(|d| disks.get_mut(d))
                            .ok_or_else(|| format!("HostResource {h:?} names no Disk"))?;
                        *d = true;
                    }
                    if field("ResourceType")[0] == "10" {
                        for n in field("Connection") {
                            if !networks.contains(&n) {
                                return Err(format!("Connection {n:?} names no Network"));
                            }
                        }
                    }
                }
                other if other == "Config" || c.tag_name().namespace() != Some(OVF_NS) => {}
                other => return Err(format!("<{other}> in VirtualHardwareSection")),
            }
        }
        if items == 0 {
            return Err("VirtualHardwareSection without an Item".into());
        }
    }
    if let Some((d, _)) = disks.iter().find(|(_, used)| !**used) {
        return Err(format!("Disk {d:?} is used by no Item"));
    }
    if let Some(p) = parents.iter().find(|p| !ids.contains(*p)) {
        return Err(format!("Parent {p:?} names no Item"));
    }
    Ok(())
}

#[test]
fn descriptors_validate_structurally_against_dsp8023() {
    let disk = |device: &str, bus| DescriptorDisk {
        device: device.into(),
        bus,
        file_name: format!("app-{device}.vmdk"),
        file_size: 1 << 20,
        capacity: 8 << 20,
    };
    let mut spec = spec("app", &["disk0", "disk1"]);
    spec.cdroms.push(Cdrom {
        device: "cdrom0".into(),
        bus: DiskBus::Ide,
        media: None,
    });
    let disks = [disk("disk0", DiskBus::Virtio), disk("disk1", DiskBus::Sata)];
    let full = ovf_descriptor(&spec, &disks);
    check_dsp8023(&full).unwrap_or_else(|e| panic!("{e}\n{full}"));
    // InstanceID sits between HostResource and Parent, not first.
    assert!(
        full.contains(
            "<rasd:HostResource>ovf:/disk/vmdisk0</rasd:HostResource>\n        <rasd:InstanceID>"
        ),
        "{full}"
    );

    // No NICs: no NetworkSection at all (the schema needs at least one Network in one).
    spec.nics.clear();
    let bare = ovf_descriptor(&spec, &disks[..1]);
    assert!(!bare.contains("NetworkSection"), "{bare}");
    check_dsp8023(&bare).unwrap_or_else(|e| panic!("{e}\n{bare}"));
    assert_eq!(parse_ovf(&bare).unwrap().spec.nics.len(), 0);

    // The checker catches what the old writer did and other breakage.
    let instance_first = full.replacen(
        "<rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>",
        "<rasd:Weight>1</rasd:Weight><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>",
        1,
    );
    assert!(check_dsp8023(&instance_first)
        .unwrap_err()
        .contains("comes after <Weight>"));
    let empty_net = bare.replace(
        "  <VirtualSystem",
        "  <NetworkSection><Info>n</Info></NetworkSection>\n  <VirtualSystem",
    );
    assert!(check_dsp8023(&empty_net)
        .unwrap_err()
        .contains("without a Network"));
    let orphan_disk = full.replace("ovf:/disk/vmdisk1", "ovf:/disk/vmdisk0");
    assert!(check_dsp8023(&orphan_disk)
        .unwrap_err()
        .contains("\"vmdisk1\" is used by no Item"));
    let no_capacity = full.replacen("ovf:capacity=", "ovf:kapacity=", 1);
    assert!(check_dsp8023(&no_capacity)
        .unwrap_err()
        .contains("ovf:capacity"));
}

#[test]
fn secure_boot_survives_an_ova_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = make_disks(dir.path());
    let mut spec = spec("win", &["disk0"]);
    spec.firmware = Firmware::UefiSecure;
    spec.disks[0].format = DiskFormat::Qcow2;
    let disks = vec![OvaDisk {
        device: "disk0".into(),
        path: a.into(),
        format: DiskFormat::Qcow2,
    }];
    let mut out = Vec::new();
    write_ova(&mut out, &spec, &disks, dir.path(), &no_progress).unwrap();
    let desc = String::from_utf8(read_tar(&out)[0].1.clone()).unwrap();
    check_dsp8023(&desc).unwrap_or_else(|e| panic!("{e}\n{desc}"));
    assert!(
        desc.contains("vmw:key=\"uefi.secureBoot.enabled\" vmw:value=\"true\""),
        "{desc}"
    );
    assert_eq!(
        parse_ovf(&desc).unwrap().spec.firmware,
        Firmware::UefiSecure
    );
}
