//! Write seed inputs for the fuzz targets into `corpus/<target>/`:
//! `cargo run --bin gen-seeds` (from this directory, stable toolchain is fine).

use corral_archive::*;
use corral_model::*;
use std::io;

struct Mem(Vec<u8>);

impl DiskSource for Mem {
    fn virtual_size(&self) -> u64 {
        self.0.len() as u64
    }
    fn allocated_extents(&self) -> io::Result<Vec<(u64, u64)>> {
        Ok(vec![(0, 65536), (196608, 65536)])
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        buf.copy_from_slice(&self.0[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
}

/// A developer tool: any failure ends it with the error (`?`), nothing to recover.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = VmSpec {
        name: "seed".into(),
        description: String::new(),
        vcpus: 1,
        memory_bytes: 64 << 20,
        autostart: false,
        cpu_weight: 256,
        firmware: Firmware::Bios,
        disks: vec![],
        cdroms: vec![],
        nics: vec![],
        kernel_boot: None,
        boot_device: BootDevice::Disk,
        template: None,
        is_template: false,
        install: None,
        tpm: false,
    };
    std::fs::create_dir_all("corpus/native_reader")?;
    for (i, c) in [Compression::Zstd, Compression::None]
        .into_iter()
        .enumerate()
    {
        let mut d = vec![0u8; 256 << 10];
        d[..100].fill(7);
        d[200_000] = 1;
        let mut out = Vec::new();
        let opts = WriteOptions {
            compression: c,
            extent_max_bytes: 65536,
            ..Default::default()
        };
        write_archive(
            &mut out,
            &spec,
            vec![("disk0".into(), Box::new(Mem(d)))],
            &opts,
            &no_progress,
        )?;
        std::fs::write(format!("corpus/native_reader/seed{i}"), out)?;
    }
    // Format 2.0: a kernel and an initrd carried beside the disk.
    let tmp = std::env::temp_dir().join(format!("corral-seed-files-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let (k, i) = (tmp.join("vmlinuz"), tmp.join("initrd"));
    std::fs::write(&k, b"seed kernel")?;
    std::fs::write(&i, vec![3u8; 700])?;
    let mut with_kernel = spec.clone();
    with_kernel.kernel_boot = Some(KernelBoot {
        kernel: k.clone(),
        initrd: Some(i.clone()),
        cmdline: "console=ttyS0".into(),
    });
    let mut out = Vec::new();
    let opts = WriteOptions {
        extent_max_bytes: 65536,
        files: vec![(FileRole::Kernel, k), (FileRole::Initrd, i)],
        ..Default::default()
    };
    let mut d = vec![0u8; 128 << 10];
    d[..100].fill(9);
    write_archive(
        &mut out,
        &with_kernel,
        vec![("disk0".into(), Box::new(Mem(d)))],
        &opts,
        &no_progress,
    )?;
    std::fs::write("corpus/native_reader/seed-files", out)?;
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all("corpus/ovf_parser")?;
    for e in std::fs::read_dir("../tests/data/ovf")? {
        let p = e?.path();
        std::fs::copy(
            &p,
            format!(
                "corpus/ovf_parser/{}",
                p.file_name()
                    .ok_or("an OVF seed without a file name")?
                    .to_string_lossy()
            ),
        )?;
    }
    std::fs::create_dir_all("corpus/xva_reader")?;
    // API bodies: the first byte picks the type (fuzz_targets/api_bodies.rs), then JSON of
    // the shape the CLI sends.
    std::fs::create_dir_all("corpus/api_bodies")?;
    let bodies: [(u8, &str); 8] = [
        (
            0,
            r#"{"name":"web01","vcpus":2,"memory_bytes":268435456,"disks":[{"size_bytes":1073741824}],"nics":[{"network":"default"}]}"#,
        ),
        (
            1,
            r#"{"description":"made by hand","memory_bytes":536870912,"cpu_weight":512}"#,
        ),
        (3, r#"{"force":true}"#),
        (5, r#"{"size_bytes":1073741824,"sr":"default"}"#),
        (6, r#"{"network":"lan","mac":"52:54:00:12:34:56"}"#),
        (
            11,
            r#"{"to":"xen02","live":true,"with_storage":true,"max_downtime_ms":300}"#,
        ),
        (12, r#"{"to":"auto"}"#),
        (
            13,
            r#"{"name":"ops","role":"operator","vms":"web*","expires_in_secs":2592000}"#,
        ),
    ];
    for (i, (pick, json)) in bodies.iter().enumerate() {
        let mut seed = vec![*pick];
        seed.extend_from_slice(json.as_bytes());
        std::fs::write(format!("corpus/api_bodies/seed{i}"), seed)?;
    }
    // The console handshake: flags, then query, Cookie header, the ticket's session, its VM
    // and the VM asked for, separated by 0xFF (fuzz_targets/console_handshake.rs).
    std::fs::create_dir_all("corpus/console_handshake")?;
    let handshakes: [(u8, &str, &str, &str, &str, &str); 3] = [
        (
            0b0_0011,
            "ticket=ab12",
            "corral_session=s1; other=x",
            "s1",
            "vm-1",
            "vm-1",
        ),
        (0b1_1001, "ticket=", "", "", "vm-1", "vm-2"),
        (
            0b0_0111,
            "ticket=ab12&x=1",
            "corral_session=s2",
            "s1",
            "vm-1",
            "vm-1",
        ),
    ];
    for (i, (flags, query, cookie, session, issued_vm, asked_vm)) in handshakes.iter().enumerate() {
        let mut seed = vec![*flags];
        for (n, field) in [query, cookie, session, issued_vm, asked_vm]
            .iter()
            .enumerate()
        {
            if n > 0 {
                seed.push(0xFF);
            }
            seed.extend_from_slice(field.as_bytes());
        }
        std::fs::write(format!("corpus/console_handshake/seed{i}"), seed)?;
    }
    // V2V: a guest's configuration files (the P2V fixture's), a facts script's output, and the
    // head of an MBR disk with an ext4 and an LVM partition (fuzz_targets/v2v_guest.rs).
    std::fs::create_dir_all("corpus/v2v_guest")?;
    let texts = [
        "/dev/sda1 / ext4 errors=remount-ro 0 1\n/dev/mapper/vg-lv /var ext4 defaults 0 2\n/dev/sdb1 /data ext4 defaults 0 2\n",
        "auto lo eth0\niface lo inet loopback\nallow-hotplug ens5\niface ens5 inet static\n  address 192.0.2.5/24\nauto br0\niface br0 inet dhcp\n  bridge_ports ens6\n",
        "GRUB_CMDLINE_LINUX=\"root=/dev/sda1 resume=/dev/hda5\"\nGRUB_DISABLE_LINUX_UUID=true\n",
        "network:\n  ethernets:\n    enp3s0:\n      dhcp4: true\n      set-name: eth7\n",
        "[Match]\nName=enp1s0\n[Network]\nDHCP=yes\n",
        "@@B file /etc/fstab\nx\n@@B end\n@@B kernel 6.1 virtio_blk yes\n@@B mbr grub\n@@B done\n",
        "UUID: 1234\nTYPE: ext4\nPART_ENTRY_NUMBER: 2\nPART_ENTRY_OFFSET: 6144\nPART_ENTRY_SIZE: 100\n",
    ];
    for (i, t) in texts.iter().enumerate() {
        std::fs::write(format!("corpus/v2v_guest/text{i}"), t)?;
    }
    let mut mbr = vec![0u8; 4096];
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    for (i, (kind, start)) in [(0x83u8, 2048u32), (0x8e, 4096)].iter().enumerate() {
        let e = 0x1be + 16 * i;
        mbr[e + 4] = *kind;
        mbr[e + 8..e + 12].copy_from_slice(&start.to_le_bytes());
    }
    std::fs::write("corpus/v2v_guest/mbr", mbr)?;
    // P2V: a pass of two frames (one compressed, one stored) and its end frame.
    std::fs::create_dir_all("corpus/p2v_frames")?;
    let mut pass = corral_p2v::wire::encode_data(1, 0, &[0u8; 4096], Some(1));
    let noise: Vec<u8> = (0..1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    pass.extend(corral_p2v::wire::encode_data(2, 1 << 20, &noise, None));
    pass.extend(corral_p2v::wire::encode_end(3));
    std::fs::write("corpus/p2v_frames/pass", pass)?;
    println!("seeds written; add XVA seeds with ../tests/xva-writer/make_xva.py");
    Ok(())
}
