//! Table tests: built-ins, inheritance, restrictions, user templates, osinfo.

// Table rows are tuples on purpose: one line per case reads best.
#![allow(clippy::type_complexity)]

use super::*;
use std::fs;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn builtins() -> Catalog {
    Catalog::load_with(LoadOptions::default()).expect("built-ins load")
}

fn catalog_with(files: &[(&str, &str)]) -> (Catalog, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        fs::write(dir.path().join(name), text).expect("write");
    }
    let cat = Catalog::load_with(LoadOptions {
        user_dir: Some(dir.path()),
        osinfo_dir: None,
    })
    .expect("load");
    (cat, dir)
}

#[test]
fn every_required_builtin_is_present_and_valid() {
    let cat = builtins();
    let names: Vec<&str> = cat.list().iter().map(|t| t.name.as_str()).collect();
    for want in [
        "debian-11",
        "debian-12",
        "ubuntu-22.04",
        "ubuntu-24.04",
        "rhel-8",
        "rhel-9",
        "almalinux-8",
        "almalinux-9",
        "rocky-8",
        "rocky-9",
        "sles-15",
        "opensuse-15",
        "windows-10",
        "windows-11",
        "windows-server-2019",
        "windows-server-2022",
        "windows-2019",
        "windows-2022",
        "other-install-media",
        "corral-test-guest",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
        assert!(cat.get(want).expect(want).is_builtin());
    }
    assert!(cat.warnings().is_empty(), "{:?}", cat.warnings());
}

#[test]
fn builtin_values_users_rely_on() {
    let cat = builtins();
    // (name, family, vcpus, recommended memory, first disk, disk bus, nic model, firmware, unattended)
    let table: &[(
        &str,
        OsFamily,
        u32,
        u64,
        u64,
        DiskBus,
        NicModel,
        Firmware,
        UnattendedKind,
    )] = &[
        (
            "debian-11",
            OsFamily::Debian,
            1,
            GIB,
            10 * GIB,
            DiskBus::Virtio,
            NicModel::Virtio,
            Firmware::Bios,
            UnattendedKind::Preseed,
        ),
        (
            "debian-12",
            OsFamily::Debian,
            1,
            2 * GIB,
            20 * GIB,
            DiskBus::Virtio,
            NicModel::Virtio,
            Firmware::Bios,
            UnattendedKind::Preseed,
        ),
        (
            "ubuntu-24.04",
            OsFamily::Ubuntu,
            2,
            4 * GIB,
            25 * GIB,
            DiskBus::Virtio,
            NicModel::Virtio,
            Firmware::Bios,
            UnattendedKind::CloudInit,
        ),
        (
            "rhel-9",
            OsFamily::Rhel,
            2,
            4 * GIB,
            20 * GIB,
            DiskBus::Virtio,
            NicModel::Virtio,
            Firmware::Bios,
            UnattendedKind::Kickstart,
        ),
        (
            "rocky-9",
            OsFamily::Rhel,
            2,
            4 * GIB,
            20 * GIB,
            DiskBus::Virtio,
            NicModel::Virtio,
            Firmware::Bios,
            UnattendedKind::Kickstart,
        ),
        (
            "almalinux-8",
            OsFamily::Rhel,
            2,
            2 * GIB,
            20 * GIB,
            DiskBus::Virtio,
            NicModel::Virtio,
            Firmware::Bios,
            UnattendedKind::Kickstart,
        ),
        (
            "opensuse-15",
            OsFamily::Suse,
            2,
            2 * GIB,
            24 * GIB,
            DiskBus::Virtio,
            NicModel::Virtio,
            Firmware::Bios,
            UnattendedKind::Autoyast,
        ),
        (
            "windows-10",
            OsFamily::Windows,
            2,
            4 * GIB,
            64 * GIB,
            DiskBus::Sata,
            NicModel::E1000,
            Firmware::Bios,
            UnattendedKind::None,
        ),
        (
            "windows-11",
            OsFamily::Windows,
            2,
            8 * GIB,
            64 * GIB,
            DiskBus::Sata,
            NicModel::E1000,
            Firmware::UefiSecure,
            UnattendedKind::None,
        ),
        (
            "windows-server-2022",
            OsFamily::Windows,
            2,
            4 * GIB,
            64 * GIB,
            DiskBus::Sata,
            NicModel::E1000,
            Firmware::Uefi,
            UnattendedKind::None,
        ),
        (
            "other-install-media",
            OsFamily::Other,
            1,
            GIB,
            8 * GIB,
            DiskBus::Ide,
            NicModel::Rtl8139,
            Firmware::Bios,
            UnattendedKind::None,
        ),
        (
            "corral-test-guest",
            OsFamily::CorralTest,
            1,
            128 * MIB,
            64 * MIB,
            DiskBus::Virtio,
            NicModel::Virtio,
            Firmware::Bios,
            UnattendedKind::None,
        ),
    ];
    for (name, family, vcpus, mem, disk, bus, nic, fw, un) in table {
        let t = cat.get(name).expect(name);
        assert_eq!(t.os.family, *family, "{name}");
        assert_eq!(t.vcpus, *vcpus, "{name}");
        assert_eq!(t.memory_recommended_bytes, *mem, "{name}");
        assert_eq!(t.disks[0].size_bytes, *disk, "{name}");
        assert_eq!(t.disks[0].bus, *bus, "{name}");
        assert_eq!(t.nic_model, *nic, "{name}");
        assert_eq!(t.firmware, *fw, "{name}");
        assert_eq!(t.unattended, *un, "{name}");
    }
    let w = cat.get("windows-10").expect("windows-10");
    assert_eq!(w.device_model, DeviceModel::Emulated);
    assert!(!w.install_methods.contains(&InstallMethod::Nfs));
    let d = cat.get("debian-12").expect("debian-12");
    assert_eq!(d.os.codename.as_deref(), Some("bookworm"));
    assert_eq!(d.derived_from.as_deref(), Some("debian-11"));
    assert_eq!(d.restrictions.max_vcpus, 8, "inherited from debian-11");
}

#[test]
fn inheritance_table() {
    let base = r#"
name = "base"
description = "base"
vcpus = 2
install_methods = ["http"]
installer_args = "console=ttyS0"
[os]
family = "debian"
version = "1"
[memory]
minimum = "256M"
recommended = "1G"
[[disks]]
size = "10G"
[nics]
count = 2
model = "e1000"
[restrictions]
max_vcpus = 4
"#;
    let mid = r#"
name = "mid"
derived_from = "base"
[memory]
recommended = "2G"
[restrictions]
max_nics = 3
"#;
    let leaf = r#"
name = "leaf"
derived_from = "mid"
vcpus = 3
description = "leaf"
[os]
version = "3"
[[disks]]
size = "1G"
[[disks]]
size = 2147483648
bus = "ide"
"#;
    let (cat, _dir) = catalog_with(&[("base.toml", base), ("mid.toml", mid), ("leaf.toml", leaf)]);
    assert!(cat.warnings().is_empty(), "{:?}", cat.warnings());
    // (template, vcpus, min mem, rec mem, disks, nic count, max vcpus, max nics, os version, description)
    let table: &[(&str, u32, u64, u64, Vec<u64>, u32, u32, u32, &str, &str)] = &[
        (
            "base",
            2,
            256 * MIB,
            GIB,
            vec![10 * GIB],
            2,
            4,
            8,
            "1",
            "base",
        ),
        (
            "mid",
            2,
            256 * MIB,
            2 * GIB,
            vec![10 * GIB],
            2,
            4,
            3,
            "1",
            "base",
        ),
        (
            "leaf",
            3,
            256 * MIB,
            2 * GIB,
            vec![GIB, 2 * GIB],
            2,
            4,
            3,
            "3",
            "leaf",
        ),
    ];
    for (name, vcpus, min, rec, disks, nics, max_v, max_n, ver, desc) in table {
        let t = cat.get(name).expect(name);
        assert_eq!(t.vcpus, *vcpus, "{name} vcpus");
        assert_eq!(t.memory_minimum_bytes, *min, "{name} min");
        assert_eq!(t.memory_recommended_bytes, *rec, "{name} rec");
        assert_eq!(
            t.disks.iter().map(|d| d.size_bytes).collect::<Vec<_>>(),
            *disks,
            "{name} disks"
        );
        assert_eq!(t.nic_count, *nics, "{name} nics");
        assert_eq!(t.nic_model, NicModel::E1000, "{name} nic model");
        assert_eq!(t.restrictions.max_vcpus, *max_v, "{name}");
        assert_eq!(t.restrictions.max_nics, *max_n, "{name}");
        assert_eq!(t.os.version, *ver, "{name}");
        assert_eq!(t.description, *desc, "{name}");
        assert_eq!(t.installer_args, "console=ttyS0", "{name}");
    }
    let leaf = cat.get("leaf").expect("leaf");
    assert_eq!(leaf.disks[1].bus, DiskBus::Ide);
    assert_eq!(leaf.derived_from.as_deref(), Some("mid"));
}

#[test]
fn user_template_can_derive_from_a_builtin() {
    let (cat, _dir) = catalog_with(&[(
        "web.toml",
        "name = \"web\"\nderived_from = \"debian-12\"\nvcpus = 4\n[memory]\nrecommended = \"4G\"\n",
    )]);
    let t = cat.get("web").expect("web");
    assert_eq!(t.vcpus, 4);
    assert_eq!(t.os.family, OsFamily::Debian);
    assert_eq!(t.os.codename.as_deref(), Some("bookworm"));
    assert!(matches!(t.source, TemplateSource::User { .. }));
    assert!(cat.list().iter().any(|t| t.name == "web"));
}

#[test]
fn broken_user_templates_are_skipped_with_a_reason() {
    let cases: &[(&str, &str, &str)] = &[
        ("a.toml", "name = \"a\"\nderived_from = \"b\"\n", "cycle: a -> b -> a"),
        ("b.toml", "name = \"b\"\nderived_from = \"a\"\n", "cycle"),
        ("orphan.toml", "name = \"orphan\"\nderived_from = \"no-such\"\n", "unknown template \"no-such\""),
        ("typo.toml", "name = \"typo\"\nvcpu = 2\n", "unknown field `vcpu`"),
        ("badname.toml", "name = \"bad name\"\n", "contains ' '"),
        ("bigcpu.toml", "name = \"bigcpu\"\nderived_from = \"debian-12\"\nvcpus = 9\n", "vcpus 9 is more than restrictions.max_vcpus 8"),
        ("mem.toml", "name = \"mem\"\nderived_from = \"debian-12\"\n[memory]\nrecommended = \"lots\"\n", "memory.recommended: size \"lots\""),
        ("ph.toml", "name = \"ph\"\nderived_from = \"debian-12\"\ninstaller_args = \"url={nope}\"\n", "unknown placeholder {nope}"),
        ("dup.toml", "name = \"debian-12\"\n", "already defined by a built-in"),
        ("bus.toml", "name = \"bus\"\nderived_from = \"debian-12\"\n[[disks]]\nsize = \"1G\"\nbus = \"scsi\"\n", "bus \"scsi\""),
        ("minmax.toml", "name = \"minmax\"\nderived_from = \"debian-12\"\n[restrictions]\nmax_memory = \"1G\"\n", "memory.recommended 2 GiB is more than restrictions.max_memory 1 GiB"),
    ];
    let files: Vec<(&str, &str)> = cases.iter().map(|(f, t, _)| (*f, *t)).collect();
    let (cat, _dir) = catalog_with(&files);
    let warnings = cat.warnings().join("\n");
    for (file, _, needle) in cases {
        assert!(
            warnings.contains(needle),
            "{file}: {needle:?} not in\n{warnings}"
        );
    }
    for name in ["a", "b", "orphan", "bigcpu", "mem", "ph", "bus", "minmax"] {
        assert!(cat.list().iter().all(|t| t.name != name), "{name} listed");
        // `get` explains why rather than claiming the template does not exist.
        let err = cat.get(name).expect_err(name);
        assert!(
            !matches!(err, TemplateError::NotFound { .. }),
            "{name}: {err}"
        );
    }
    let err = cat.get("orphan").expect_err("orphan").to_string();
    assert_eq!(
        err,
        "template \"orphan\" derives from unknown template \"no-such\""
    );
}

#[test]
fn not_found_suggests_close_names() {
    let cat = builtins();
    let cases: &[(&str, &[&str])] = &[
        ("debian-13", &["debian-12", "debian-11"]),
        ("debian", &["debian-11", "debian-12"]),
        ("windows-2021", &["windows-2022"]),
        ("rhel9", &["rhel-9"]),
    ];
    for (asked, want) in cases {
        let err = cat.get(asked).expect_err(asked);
        let TemplateError::NotFound { close, .. } = &err else {
            panic!("{asked}: {err}");
        };
        for w in *want {
            assert!(
                close.iter().any(|c| c == w),
                "{asked}: {w} not in {close:?}"
            );
        }
        assert!(err.to_string().contains("did you mean"), "{err}");
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }
    let err = cat.get("zzzzzzzzzzzzzz").expect_err("zz");
    assert_eq!(err.to_string(), "no template named \"zzzzzzzzzzzzzz\"");
}

#[test]
fn restrictions_table() {
    let cat = builtins();
    // (template, vcpus, memory, nics, disks, expected messages)
    let table: &[(&str, u32, u64, usize, usize, &[&str])] = &[
        ("debian-12", 8, 2 * GIB, 1, 1, &[]),
        (
            "debian-12",
            9,
            2 * GIB,
            1,
            1,
            &["debian-12 allows at most 8 vCPUs; asked for 9"],
        ),
        (
            "debian-12",
            1,
            128 * MIB,
            1,
            1,
            &["debian-12 needs at least 256 MiB of memory; asked for 128 MiB"],
        ),
        (
            "debian-12",
            1,
            65 * GIB,
            1,
            1,
            &["debian-12 allows at most 64 GiB of memory; asked for 65 GiB"],
        ),
        (
            "debian-12",
            1,
            GIB,
            9,
            17,
            &[
                "debian-12 allows at most 8 NICs; asked for 9",
                "debian-12 allows at most 16 disks; asked for 17",
            ],
        ),
        (
            "windows-11",
            2,
            2 * GIB,
            1,
            1,
            &["windows-11 needs at least 4 GiB of memory; asked for 2 GiB"],
        ),
        (
            "other-install-media",
            1,
            16 * MIB,
            1,
            5,
            &["other-install-media allows at most 4 disks; asked for 5"],
        ),
        (
            "corral-test-guest",
            9,
            8 * GIB,
            1,
            1,
            &[
                "corral-test-guest allows at most 8 vCPUs; asked for 9",
                "corral-test-guest allows at most 4 GiB of memory; asked for 8 GiB",
            ],
        ),
    ];
    for (name, vcpus, mem, nics, disks, want) in table {
        let t = cat.get(name).expect(name);
        let got = t
            .check_restrictions(*vcpus, *mem, *nics, *disks)
            .err()
            .unwrap_or_default();
        assert_eq!(
            got,
            want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "{name}"
        );
    }
}

#[test]
fn apply_to_request_fills_defaults_and_enforces_restrictions() {
    let cat = builtins();
    let t = cat.get("windows-10").expect("windows-10");
    let mut req = VmCreateRequest {
        name: "ad01".into(),
        ..Default::default()
    };
    t.apply_to_request(&mut req, "default").expect("fits");
    assert_eq!(req.template.as_deref(), Some("windows-10"));
    assert_eq!(req.vcpus, Some(2));
    assert_eq!(req.memory_bytes, Some(4 * GIB));
    let disks = req.disks.as_ref().expect("disks");
    assert_eq!(disks.len(), 1);
    assert_eq!(disks[0].bus, Some(DiskBus::Sata));
    let nics = req.nics.as_ref().expect("nics");
    assert_eq!(nics[0].network, "default");
    assert_eq!(nics[0].model, Some(NicModel::E1000));

    // User-given values win; entries without a bus/model get the template's.
    let mut req = VmCreateRequest {
        name: "x".into(),
        vcpus: Some(4),
        disks: Some(vec![DiskRequest {
            size_bytes: GIB,
            ..Default::default()
        }]),
        nics: Some(vec![]),
        ..Default::default()
    };
    t.apply_to_request(&mut req, "default").expect("fits");
    assert_eq!(req.vcpus, Some(4));
    assert_eq!(
        req.disks.as_ref().expect("disks")[0].bus,
        Some(DiskBus::Sata)
    );
    assert_eq!(req.nics.as_ref().map(Vec::len), Some(0));

    let d = cat.get("debian-12").expect("debian-12");
    let mut req = VmCreateRequest {
        name: "big".into(),
        vcpus: Some(9),
        ..Default::default()
    };
    let err = d
        .apply_to_request(&mut req, "default")
        .expect_err("9 vcpus");
    assert_eq!(
        err,
        vec!["debian-12 allows at most 8 vCPUs; asked for 9".to_string()]
    );
}

#[test]
fn installer_args_render_and_drop_missing_placeholders() {
    let cases: &[(&str, ArgValues, &str)] = &[
        ("a url={unattended_url} b", ArgValues::default(), "a b"),
        (
            "inst.repo={location} inst.ks={unattended_url} hostname={name}",
            ArgValues {
                location: Some("http://h/t".into()),
                unattended_url: Some("http://10.0.2.2/ks".into()),
                name: Some("db01".into()),
            },
            "inst.repo=http://h/t inst.ks=http://10.0.2.2/ks hostname=db01",
        ),
        ("  x   y ", ArgValues::default(), "x y"),
    ];
    for (args, values, want) in cases {
        assert_eq!(render_args(args, values), *want, "{args}");
    }
}

#[test]
fn add_and_remove_user_templates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tdir = dir.path().join("templates");
    let mut cat = Catalog::load_with(LoadOptions {
        user_dir: Some(&tdir),
        osinfo_dir: None,
    })
    .expect("load with a missing dir");
    let t = cat
        .add_user(
            "name = \"web\"\nderived_from = \"debian-12\"\nvcpus = 2\n",
            &tdir,
        )
        .expect("add");
    assert_eq!(t.vcpus, 2);
    assert!(tdir.join("web.toml").is_file());
    cat.add_user(
        "name = \"web-big\"\nderived_from = \"web\"\nvcpus = 4\n",
        &tdir,
    )
    .expect("add child");

    // Survives a reload.
    let mut cat = Catalog::load_with(LoadOptions {
        user_dir: Some(&tdir),
        osinfo_dir: None,
    })
    .expect("reload");
    assert_eq!(cat.get("web-big").expect("web-big").vcpus, 4);

    let cases: Vec<(Result<Template, TemplateError>, &str)> = vec![
        (
            cat.add_user("name = \"web\"\n", &tdir),
            "template \"web\" already exists",
        ),
        (
            cat.add_user("name = \"debian-12\"\n", &tdir),
            "template \"debian-12\" already exists",
        ),
        (
            cat.add_user(
                "name = \"x\"\nderived_from = \"debian-12\"\nvcpus = 9\n",
                &tdir,
            ),
            "template \"x\" is invalid: vcpus 9 is more than restrictions.max_vcpus 8",
        ),
        (
            cat.add_user("name = \"y\"\nderived_from = \"nope\"\n", &tdir),
            "unknown template \"nope\"",
        ),
        (
            cat.add_user("this is not toml", &tdir),
            "template file new template:",
        ),
    ];
    for (res, needle) in cases {
        let err = res.expect_err(needle).to_string();
        assert!(err.contains(needle), "{err} lacks {needle}");
    }
    assert!(
        !tdir.join("x.toml").exists(),
        "an invalid template leaves no file"
    );

    let err = cat.remove_user("debian-12", &tdir).expect_err("builtin");
    assert_eq!(
        err.to_string(),
        "template \"debian-12\" is built in and cannot be deleted"
    );
    let err = cat.remove_user("web", &tdir).expect_err("has child");
    assert_eq!(
        err.to_string(),
        "template \"web\" cannot be deleted: web-big derived from it"
    );
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let err = cat.remove_user("nope", &tdir).expect_err("missing");
    assert_eq!(err.kind(), ErrorKind::NotFound);

    cat.remove_user("web-big", &tdir).expect("remove child");
    cat.remove_user("web", &tdir).expect("remove parent");
    assert!(!tdir.join("web.toml").exists());
    assert!(cat.get("web").is_err());
}

const OSINFO_FIXTURE: &str = r#"<?xml version="1.0"?>
<libosinfo version="0.0.1">
  <os id="http://example.org/exos/1">
    <short-id>exos1</short-id>
    <name>ExOS 1</name>
    <name xml:lang="de">ExOS Eins</name>
    <version>1</version>
    <family>linux</family>
    <distro>fedora</distro>
    <resources arch="all">
      <minimum><n-cpus>1</n-cpus><ram>1073741824</ram><storage>10737418240</storage></minimum>
      <recommended><n-cpus>2</n-cpus><ram>2147483648</ram><storage>21474836480</storage></recommended>
    </resources>
    <tree arch="x86_64">
      <treeinfo><family>ExOS</family><version>^1(.[0-9]+)?$</version><arch>x86_64</arch></treeinfo>
      <kernel>boot/vmlinuz</kernel>
      <initrd>boot/initrd.img</initrd>
    </tree>
  </os>
  <os id="http://example.org/exos/2">
    <short-id>exos2</short-id>
    <name>ExOS 2</name>
    <version>2</version>
    <family>linux</family>
    <distro>fedora</distro>
    <derives-from id="http://example.org/exos/1"/>
  </os>
</libosinfo>
"#;

#[test]
fn osinfo_fixture_becomes_templates() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(dir.path().join("example.org")).expect("mkdir");
    fs::write(dir.path().join("example.org/exos.xml"), OSINFO_FIXTURE).expect("write");
    fs::write(
        dir.path().join("example.org/evil.xml"),
        "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"aaaa\">]><libosinfo>&a;</libosinfo>",
    )
    .expect("write");
    let users = tempfile::tempdir().expect("tempdir");
    fs::write(
        users.path().join("mine.toml"),
        "name = \"mine\"\nderived_from = \"osinfo:exos2\"\nvcpus = 3\n",
    )
    .expect("write");
    let cat = Catalog::load_with(LoadOptions {
        user_dir: Some(users.path()),
        osinfo_dir: Some(dir.path()),
    })
    .expect("load");
    let t = cat.get("osinfo:exos1").expect("exos1");
    assert_eq!(t.os.family, OsFamily::Rhel);
    assert_eq!(t.vcpus, 2);
    assert_eq!(t.memory_minimum_bytes, GIB);
    assert_eq!(t.memory_recommended_bytes, 2 * GIB);
    assert_eq!(t.disks[0].size_bytes, 20 * GIB);
    assert!(t.install_methods.contains(&InstallMethod::Http));
    assert_eq!(t.description, "ExOS 1 (from osinfo-db)");
    // Resources come from the OS it derives from.
    let t2 = cat.get("osinfo:exos2").expect("exos2");
    assert_eq!(t2.memory_recommended_bytes, 2 * GIB);
    assert!(
        !t2.install_methods.contains(&InstallMethod::Http),
        "exos2 has no tree"
    );
    // User templates may derive from osinfo ones.
    assert_eq!(cat.get("mine").expect("mine").vcpus, 3);
    // DTDs are refused, so entity expansion never happens.
    assert!(
        cat.warnings().iter().any(|w| w.contains("evil.xml")),
        "{:?}",
        cat.warnings()
    );
    // Detection can name the OS from its treeinfo.
    assert_eq!(
        cat.osinfo_for_treeinfo("ExOS", "1.4")
            .map(|t| t.name.as_str()),
        Some("osinfo:exos1")
    );
    assert!(cat.osinfo_for_treeinfo("ExOS", "2").is_none());
    assert_eq!(
        cat.osinfo_kernel_paths(),
        vec![("boot/vmlinuz".to_string(), "boot/initrd.img".to_string())]
    );
    assert_eq!(cat.list_osinfo().len(), 2);
    assert!(cat.list().iter().all(|t| !t.name.starts_with("osinfo:")));
}

#[test]
fn debians_osinfo_db_fills_in_oses_without_builtins() {
    let dir = Path::new(osinfo::DEFAULT_OS_DIR);
    assert!(
        dir.is_dir(),
        "Debian package osinfo-db must be installed for this test"
    );
    let cat = Catalog::load(None).expect("load");
    assert!(cat.list_osinfo().len() > 300, "{}", cat.list_osinfo().len());
    let fedora = cat.get("osinfo:fedora37").expect("fedora37");
    assert_eq!(fedora.os.family, OsFamily::Rhel);
    assert!(fedora.memory_recommended_bytes >= GIB);
    assert_eq!(
        cat.osinfo_for_treeinfo("Red Hat Enterprise Linux", "9.0")
            .map(|t| t.name.as_str()),
        Some("osinfo:rhel9.0")
    );
    assert_eq!(
        cat.osinfo_for_treeinfo("Fedora", "37")
            .map(|t| t.name.as_str()),
        Some("osinfo:fedora37")
    );
    assert!(cat.osinfo_kernel_paths().contains(&(
        "images/pxeboot/vmlinuz".to_string(),
        "images/pxeboot/initrd.img".to_string()
    )));
    let win = cat.get("osinfo:win10").expect("win10");
    assert_eq!(win.device_model, DeviceModel::Emulated);
}

#[test]
fn version_patterns() {
    let cases = [
        ("^9.0(.([0-9]|[1-9][0-9]))?$", "9.0", true),
        ("^9.0(.([0-9]|[1-9][0-9]))?$", "9.0.1", true),
        ("^9.0(.([0-9]|[1-9][0-9]))?$", "8.0", false),
        ("37", "37", true),
        ("37", "38", false),
        ("^15.4$", "15.4", true),
    ];
    for (pat, v, want) in cases {
        assert_eq!(osinfo::version_matches(pat, v), want, "{pat} {v}");
    }
}

#[test]
fn osinfo_regex_versions() {
    let pat = "^9.([2-9]|[1-9][0-9])(.([0-9]|[1-9][0-9]))?$";
    assert!(osinfo::version_matches(pat, "9.2"));
    assert!(osinfo::version_matches(pat, "9.12.1"));
    assert!(!osinfo::version_matches(pat, "9.0"));
    assert!(
        !osinfo::version_matches("^(", "9"),
        "a bad pattern matches nothing"
    );
}

#[test]
fn short_windows_names_are_the_server_templates() {
    let cat = builtins();
    for (short, long) in [
        ("windows-2019", "windows-server-2019"),
        ("windows-2022", "windows-server-2022"),
    ] {
        let (s, l) = (cat.get(short).expect(short), cat.get(long).expect(long));
        assert_eq!(s.firmware, l.firmware, "{short}");
        assert_eq!(s.os.version, l.os.version, "{short}");
        assert_eq!(s.install_methods, l.install_methods, "{short}");
        assert_eq!(
            s.memory_recommended_bytes, l.memory_recommended_bytes,
            "{short}"
        );
    }
}
